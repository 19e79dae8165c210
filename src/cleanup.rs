//! Background clean-up that outlives the transaction it belongs to: retries of rollback
//! deletes, aborts of abandoned uploads, the relay's QUIT. Every such task is spawned here,
//! so that shutdown can wait for them instead of letting the runtime drop them halfway.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use tokio_util::task::TaskTracker;

static TASKS: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// Runs `task` in the background, tracked until it ends. Outside a runtime (a `Drop` during
/// the runtime's own shutdown) there is nothing to run it on, and it is dropped.
pub fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        TASKS.spawn_on(task, &handle);
    }
}

/// Waits up to `patience` for the clean-up tasks running now and those they spawn; returns
/// how many were still running at the end.
pub async fn wait(patience: Duration) -> usize {
    TASKS.close();
    let _ = tokio::time::timeout(patience, TASKS.wait()).await;
    TASKS.reopen();
    TASKS.len()
}
