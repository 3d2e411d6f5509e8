//! Watches the plugins folder: `notify` events on `*.wasm` files, debounced,
//! trigger a rescan (which reloads only files whose content changed). A slow
//! periodic rescan catches missed events; without `notify` the folder is polled.

use std::path::Path;
use std::sync::Weak;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::registry::Registry;

/// Quiet time after the last event before rescanning.
pub const DEBOUNCE: Duration = Duration::from_millis(150);
/// Poll interval when `notify` is unavailable.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Safety rescan interval while `notify` works.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(10);

/// A running watcher; stops when dropped.
pub(crate) struct DirWatcher {
    _watcher: Option<notify::RecommendedWatcher>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_wasm(p: &Path) -> bool {
    p.extension().is_some_and(|e| e == "wasm")
}

/// Starts watching the registry's folder.
pub(crate) fn spawn(registry: Weak<Registry>, dir: &Path) -> DirWatcher {
    let (tx, rx) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !matches!(ev.kind, notify::EventKind::Access(_))
            && ev.paths.iter().any(|p| is_wasm(p))
        {
            let _ = tx.try_send(());
        }
    })
    .and_then(|mut w| w.watch(dir, RecursiveMode::NonRecursive).map(|()| w));
    let (watcher, interval) = match watcher {
        Ok(w) => (Some(w), RESCAN_INTERVAL),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot watch plugins folder ({e}); polling every {POLL_INTERVAL:?}");
            (None, POLL_INTERVAL)
        }
    };
    let task = tokio::spawn(run(registry, rx, interval));
    DirWatcher {
        _watcher: watcher,
        task,
    }
}

async fn run(registry: Weak<Registry>, mut rx: mpsc::Receiver<()>, interval: Duration) {
    loop {
        match tokio::time::timeout(interval, rx.recv()).await {
            Ok(None) => return,
            Ok(Some(())) => {
                // Debounce: wait until events stop for DEBOUNCE.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            }
            Err(_) => {}
        }
        let Some(reg) = registry.upgrade() else {
            return;
        };
        reg.scan().await;
    }
}
