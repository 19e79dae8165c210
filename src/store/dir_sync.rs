//! Group commit of directory fsyncs: one `fsync` of a folder makes every rename into it that
//! happened before the call durable, so writers that renamed into the same folder at about
//! the same time share one (as databases batch their commits).
//!
//! A writer renames first, then joins the folder's open batch. The first writer that finds
//! no fsync running leads: it closes the batch and fsyncs the folder; writers arriving
//! meanwhile open the next batch, which the next leader syncs as soon as the running fsync
//! returns. Every member of a batch gets that batch's result: a failed fsync fails each
//! write it was to make durable (and none that a later, successful one covers is told so
//! early). With one writer at a time this is one fsync per rename, as before.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// The folders of one store, each with its batches.
#[derive(Debug, Default)]
pub struct DirSyncs {
    folders: Mutex<HashMap<PathBuf, Arc<Folder>>>,
}

impl DirSyncs {
    /// Makes every rename into `dir` done before this call durable (an fsync of `dir`,
    /// shared with the writers that call at the same time). Blocks: call it off the runtime.
    pub fn sync(&self, dir: &Path) -> io::Result<()> {
        let folder = {
            let mut folders = self.folders.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(folders.entry(dir.to_path_buf()).or_default())
        };
        folder.sync(dir)
    }
}

/// One folder's batches.
#[derive(Debug, Default)]
struct Folder {
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// The batch that the next fsync will cover; writers join it.
    open: Option<Arc<Batch>>,
    /// An fsync of this folder is running.
    running: bool,
}

/// The result of one fsync, for every writer it covers (the error as text: io::Error is not
/// Clone).
#[derive(Debug, Default)]
struct Batch {
    result: OnceLock<Result<(), (io::ErrorKind, String)>>,
}

impl Folder {
    fn sync(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let batch = Arc::clone(state.open.get_or_insert_with(Default::default));
        loop {
            if let Some(result) = batch.result.get() {
                return result
                    .clone()
                    .map_err(|(kind, text)| io::Error::new(kind, text));
            }
            if !state.running {
                // Not finished and nothing running: this batch has not begun, so it is
                // the open one. Close it and lead.
                state.open = None;
                state.running = true;
                drop(state);
                let result = File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| (e.kind(), e.to_string()));
                let _ = batch.result.set(result);
                state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                state.running = false;
                self.finished.notify_all();
                continue;
            }
            state = self.finished.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writers_share_fsyncs_and_each_gets_its_batch_result() {
        let dir = tempfile::tempdir().unwrap();
        let syncs = Arc::new(DirSyncs::default());
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (syncs, root) = (Arc::clone(&syncs), dir.path().to_path_buf());
                std::thread::spawn(move || {
                    std::fs::write(root.join(format!("f{i}")), b"x").unwrap();
                    syncs.sync(&root)
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        // A folder that is gone: every writer of the batch is told.
        let missing = dir.path().join("gone");
        let err = syncs.sync(&missing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        // And the next batch is tried afresh.
        std::fs::create_dir(&missing).unwrap();
        syncs.sync(&missing).unwrap();
    }
}
