//! A guard for child processes: whatever happens in a test (success, assertion
//! failure, panic in a helper) every process it started is killed and reaped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How many log lines to print when a test fails with this process alive.
const LOG_TAIL_LINES: usize = 80;

pub struct ChildGuard {
    name: String,
    child: Child,
    log: Option<PathBuf>,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `cmd` with stderr (and stdout unless `capture_stdout`) sent to `log`.
    pub fn spawn(
        name: &str,
        cmd: &mut Command,
        log: Option<&Path>,
        capture_stdout: bool,
    ) -> std::io::Result<Self> {
        cmd.stdin(Stdio::null());
        match log {
            Some(path) => {
                let file = std::fs::File::create(path)?;
                if capture_stdout {
                    cmd.stdout(Stdio::piped());
                } else {
                    cmd.stdout(file.try_clone()?);
                }
                cmd.stderr(file);
            }
            None => {
                cmd.stdout(if capture_stdout {
                    Stdio::piped()
                } else {
                    Stdio::inherit()
                });
                cmd.stderr(Stdio::inherit());
            }
        }
        let child = cmd.spawn()?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.map(Path::to_path_buf),
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> i32 {
        // Pids fit in i32 on Linux (pid_max <= 2^22).
        self.child.id() as i32
    }

    pub fn log_path(&self) -> Option<&Path> {
        self.log.as_deref()
    }

    /// Sends a signal. Refuses once the child has been reaped, because its pid may
    /// then belong to an unrelated process.
    pub fn signal(&mut self, sig: libc::c_int) -> std::io::Result<()> {
        if self.try_wait()?.is_some() {
            return Err(std::io::Error::other(format!(
                "{} already exited; not signalling",
                self.name
            )));
        }
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own
        // unreaped child, so it cannot have been recycled.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Polls for exit until `timeout`; `None` if still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => {}
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Reads lines from the child's piped stdout until one starts with `prefix`;
    /// returns the rest of that line. Runs on a thread so a silent child cannot
    /// block the async runtime; gives up after `timeout`.
    pub async fn wait_stdout_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let stdout = match self.child.stdout.take() {
            Some(s) => s,
            None => panic!("{}: stdout was not captured", self.name),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let prefix_owned = prefix.to_string();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let found = lines.by_ref().map_while(Result::ok).find_map(|line| {
                line.strip_prefix(&prefix_owned)
                    .map(|rest| rest.trim().to_string())
            });
            let _ = tx.send(found);
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Some(rest))) => rest,
            Ok(_) => panic!(
                "{} closed stdout without printing {prefix:?}; log:\n{}",
                self.name,
                self.log_tail()
            ),
            Err(_) => panic!(
                "{} did not print {prefix:?} within {timeout:?}; log:\n{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    /// The last lines of the child's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::from("(no log file)");
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let start = lines.len().saturating_sub(LOG_TAIL_LINES);
                lines[start..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", path.display()),
        }
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .is_some_and(|t| t.to_lowercase().contains(&needle.to_lowercase()))
    }

    /// Kills (if still running) and reaps the child.
    pub fn kill(&mut self) {
        if matches!(self.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.status = Some(status);
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}) log tail ----\n{}\n---- end {} ----",
                self.name,
                self.pid(),
                self.log_tail(),
                self.name
            );
        }
        self.kill();
    }
}

/// Current resident set size (VmRSS, not the VmHWM peak) of `pid`, in kB.
pub fn rss_kb(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
