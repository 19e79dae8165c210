//! Whether the process can do its work (`/readyz`): named checks (a destination's store,
//! the worker's lock engine and sinks) that background tasks run and report here; the
//! process is ready while every check it expects passed within `ready_max_age`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The checks of one process and their last results.
#[derive(Debug, Default)]
pub struct Health {
    checks: Mutex<BTreeMap<String, Option<Last>>>,
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

    /// Ready when every check passed within `max_age`; a line per check says how it stands.
    pub fn readiness(&self, max_age: Duration) -> Readiness {
        let now = Instant::now();
        let mut ready = true;
        let mut lines = Vec::new();
        for (name, last) in self.lock().iter() {
            let line = match last {
                None => {
                    ready = false;
                    format!("{name}: not checked yet")
                }
                Some(last) => {
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
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !health.readiness(Duration::from_millis(10)).ready,
            "too old"
        );
    }
}
