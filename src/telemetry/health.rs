//! Whether the process can do its work (`/readyz`): named checks (a destination's store,
//! the worker's lock engine and sinks) that background tasks run and report here; the
//! process is ready while every check it expects passed within `ready_max_age`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A readiness check: its name in `/readyz` and what it runs (the admin listener runs it
/// in the background; whoever knows the thing checked makes it).
pub struct Check {
    pub name: String,
    pub run: CheckRun,
}

/// What a [`Check`] runs: a new try each time it is called.
pub type CheckRun =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

impl Check {
    /// A check called `name` that runs `run`.
    pub fn new<F, Fut>(name: impl Into<String>, run: F) -> Check
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Check {
            name: name.into(),
            run: Box::new(move || Box::pin(run())),
        }
    }
}

/// The checks of one process and their last results.
#[derive(Debug, Default)]
pub struct Health {
    checks: Mutex<BTreeMap<String, Option<Last>>>,
    /// The process is shutting down: not ready, whatever the checks say.
    draining: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Clone)]
struct Last {
    at: Instant,
    result: Result<(), String>,
    /// When it last passed.
    passed: Option<Instant>,
}

/// The answer to `/readyz`: ready or not, and one line per check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    pub lines: Vec<String>,
}

impl Health {
    /// Names a check the process is not ready without (it has not run yet).
    pub fn expect(&self, name: &str) {
        self.lock().entry(name.to_string()).or_insert(None);
    }

    /// Records a check's result.
    pub fn report(&self, name: &str, result: Result<(), String>) {
        let now = Instant::now();
        let mut checks = self.lock();
        let entry = checks.entry(name.to_string()).or_insert(None);
        let passed = match (&result, entry.as_ref()) {
            (Ok(()), _) => Some(now),
            (Err(_), Some(last)) => last.passed,
            (Err(_), None) => None,
        };
        *entry = Some(Last {
            at: now,
            result,
            passed,
        });
    }

    /// Marks the process as shutting down (`serve` draining, a worker finishing its
    /// messages): from now on it is not ready, so that no new work is sent its way.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ready when every check passed within `max_age` and the process is not shutting
    /// down; a line per check says how it stands.
    pub fn readiness(&self, max_age: Duration) -> Readiness {
        let now = Instant::now();
        let mut ready = true;
        let mut lines = Vec::new();
        if self.draining.load(std::sync::atomic::Ordering::Relaxed) {
            ready = false;
            lines.push("draining: shutting down".to_string());
        }
        for (name, last) in self.lock().iter() {
            let line = match last {
                None => {
                    ready = false;
                    format!("{name}: not checked yet")
                }
                Some(last) => {
                    // It passed within the age: one failed try alone does not take the
                    // process out (the age is the grace; a check that stopped running
                    // counts as failing).
                    let fresh = last.passed.is_some_and(|p| now - p <= max_age);
                    ready &= fresh;
                    let ago = (now - last.at).as_secs();
                    match (&last.result, fresh) {
                        (Ok(()), true) => format!("{name}: ok ({ago} s ago)"),
                        (Ok(()), false) => format!(
                            "{name}: last passed {ago} s ago, longer than {} s",
                            max_age.as_secs()
                        ),
                        (Err(e), _) => format!("{name}: FAILED {ago} s ago: {e}"),
                    }
                }
            };
            lines.push(line);
        }
        Readiness { ready, lines }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Option<Last>>> {
        // A panic while holding it left plain data: still usable.
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_while_every_expected_check_passed_recently() {
        let health = Health::default();
        health.expect("store OPS");
        let age = Duration::from_secs(60);
        assert!(!health.readiness(age).ready, "not checked yet");
        health.report("store OPS", Ok(()));
        assert!(health.readiness(age).ready);
        health.report("lock", Err("connection refused".into()));
        let now = health.readiness(age);
        assert!(!now.ready);
        assert!(
            now.lines
                .contains(&"lock: FAILED 0 s ago: connection refused".to_string()),
            "{now:?}"
        );
        health.report("lock", Ok(()));
        assert!(health.readiness(age).ready);
        // One failed try within the age is the grace: still ready, the line says it failed.
        health.report("lock", Err("timed out".into()));
        let now = health.readiness(age);
        assert!(
            now.ready && now.lines.iter().any(|l| l.starts_with("lock: FAILED")),
            "{now:?}"
        );
        health.report("lock", Ok(()));
        // Not checked yet: a named check that never ran.
        health.expect("sink xmpp");
        let now = health.readiness(age);
        assert!(
            !now.ready
                && now
                    .lines
                    .contains(&"sink xmpp: not checked yet".to_string()),
            "{now:?}"
        );
        health.report("sink xmpp", Ok(()));
        health.drain();
        let now = health.readiness(age);
        assert!(
            !now.ready && now.lines[0] == "draining: shutting down",
            "{now:?}"
        );
        let health = Health::default();
        health.report("store OPS", Ok(()));
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !health.readiness(Duration::from_millis(10)).ready,
            "too old"
        );
    }
}
