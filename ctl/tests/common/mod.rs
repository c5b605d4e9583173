//! What both weirctl test files need: a finished weirctl run and the checks on it.
// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::process::Output;

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        self.code(0)
    }

    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "stdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).expect("weirctl printed JSON")
    }

    /// Every line fits 80 terminal columns (all characters used here are one column wide).
    #[track_caller]
    pub fn fits(self) -> Run {
        for line in self.stdout.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line:?}");
        }
        self
    }
}
