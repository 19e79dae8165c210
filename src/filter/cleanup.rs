//! Background clean-up that outlives the transaction it belongs to: retries of rollback
//! deletes, aborts of abandoned uploads, the relay's QUIT. Every such task is spawned here,
//! so that shutdown can wait for them instead of letting the runtime drop them halfway.

use std::future::Future;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

static TASKS: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);
/// Set while shutdown waits for the clean-up: pauses end by then.
static HURRY: LazyLock<Mutex<Hurry>> = LazyLock::new(|| Mutex::new(Hurry::new()));
/// What a pause leaves of shutdown's patience for the step that follows it.
const STEP_ROOM: Duration = Duration::from_secs(5);

struct Hurry {
    /// Cancelled when shutdown begins to wait.
    begun: CancellationToken,
    /// When pauses must end, once begun.
    by: Option<Instant>,
}

impl Hurry {
    fn new() -> Hurry {
        Hurry {
            begun: CancellationToken::new(),
            by: None,
        }
    }
}

/// Runs `task` in the background, tracked until it ends. Outside a runtime (a `Drop` during
/// the runtime's own shutdown) there is nothing to run it on, and it is dropped.
pub fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        TASKS.spawn_on(task, &handle);
    }
}

/// Sleeps `pause` between two tries of a clean-up step. Once shutdown waits for the
/// clean-up, the pause ends early enough for the step to run within shutdown's patience
/// (a delayed step then runs sooner rather than not at all). Returns false when it ended
/// early.
pub async fn pause(pause: Duration) -> bool {
    let wake = Instant::now() + pause;
    let begun = HURRY.lock().unwrap().begun.clone();
    tokio::select! {
        _ = tokio::time::sleep_until(wake) => return true,
        _ = begun.cancelled() => {}
    }
    let by = HURRY.lock().unwrap().by.unwrap_or(wake);
    tokio::time::sleep_until(wake.min(by)).await;
    wake <= by
}

/// Waits up to `patience` for the clean-up tasks running now and those they spawn, their
/// pauses cut short ([`pause`]); returns how many were still running at the end.
pub async fn wait(patience: Duration) -> usize {
    let end = Instant::now() + patience;
    {
        let mut hurry = HURRY.lock().unwrap();
        hurry.by = Some(
            end.checked_sub(STEP_ROOM)
                .unwrap_or(end)
                .max(Instant::now()),
        );
        hurry.begun.cancel();
    }
    TASKS.close();
    let _ = tokio::time::timeout_at(end, TASKS.wait()).await;
    TASKS.reopen();
    *HURRY.lock().unwrap() = Hurry::new();
    TASKS.len()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn shutdown_runs_a_delayed_step_instead_of_cutting_it_off() {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        spawn(async move {
            let whole = pause(Duration::from_secs(60)).await;
            flag.store(!whole, Ordering::SeqCst);
        });
        // Other tests' clean-up may share the tracker: only this task is asserted.
        wait(Duration::from_secs(10)).await;
        assert!(
            ran.load(Ordering::SeqCst),
            "the step after the shortened pause ran"
        );
    }
}
