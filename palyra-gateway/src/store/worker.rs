//! A store's own thread: jobs are queued from any thread (never blocking the caller) and run in
//! batches on the thread, so disk IO never happens on a runtime worker or under a caller's lock,
//! and whatever queued up during one fsync is written by the next (group commit).

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;

/// Runs batches of `J` on a dedicated thread, in submission order.
pub struct Worker<J: Send + 'static> {
    name: String,
    tx: Mutex<Option<Sender<J>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<J: Send + 'static> std::fmt::Debug for Worker<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("name", &self.name).finish()
    }
}

impl<J: Send + 'static> Worker<J> {
    /// Starts thread `name`; `run` receives every batch (at least one job, all that were queued
    /// when the thread turned to the queue).
    pub fn spawn(
        name: &str,
        mut run: impl FnMut(Vec<J>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx): (Sender<J>, Receiver<J>) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let thread = std::thread::current();
                let name = thread.name().unwrap_or("store");
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    // A store that panicked cannot answer what it was handed: callers would wait
                    // forever. Stop the daemon loudly instead (what was acknowledged is durable).
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(batch)));
                    if ran.is_err() {
                        eprintln!("palyra: the {name} thread failed; stopping");
                        std::process::abort();
                    }
                }
            })?;
        Ok(Self {
            name: name.to_owned(),
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `job`; gives it back if the worker was closed.
    pub fn submit(&self, job: J) -> Result<(), J> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(job).map_err(|e| e.0),
            None => Err(job),
        }
    }

    /// Stops taking jobs and waits until every queued one has run.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl<J: Send + 'static> Drop for Worker<J> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn jobs_queued_during_a_slow_one_run_as_one_batch_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let worker = Worker::spawn("test-worker", move |batch: Vec<u32>| {
            log.lock().unwrap().push(batch.clone());
            if batch == [0] {
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .unwrap();
        worker.submit(0).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        for i in 1..=5 {
            worker.submit(i).unwrap();
        }
        worker.close();
        assert_eq!(*seen.lock().unwrap(), vec![vec![0], vec![1, 2, 3, 4, 5]]);
        assert_eq!(worker.submit(9), Err(9), "a closed worker takes nothing");
    }
}
