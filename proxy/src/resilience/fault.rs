//! Fault injection for chaos drills (off unless a ServicePolicy sets `fault`): a delay and/or
//! an abort for a percentage of calls, decided by the caller's proxy before any real work.
use std::time::Duration;

use weir_policy::Fault as FaultSpec;

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    delay: Option<(u32, Duration)>,
    abort: Option<(u32, u16)>,
}

/// What to do to one call.
#[derive(Debug, PartialEq, Eq)]
pub struct Injected {
    pub delay: Option<Duration>,
    pub abort: Option<u16>,
}

impl Fault {
    /// `None` when the spec injects nothing (both percentages 0).
    pub fn compile(spec: &FaultSpec) -> Option<Fault> {
        let delay = spec
            .delay
            .as_ref()
            .filter(|d| d.percent > 0)
            .map(|d| (d.percent, d.duration.0));
        let abort = spec
            .abort
            .as_ref()
            .filter(|a| a.percent > 0)
            .map(|a| (a.percent, a.status));
        (delay.is_some() || abort.is_some()).then_some(Fault { delay, abort })
    }

    /// `roll_delay` and `roll_abort` are uniform in [0, 100).
    pub fn decide(&self, roll_delay: f64, roll_abort: f64) -> Injected {
        Injected {
            delay: self
                .delay
                .filter(|&(p, _)| roll_delay < f64::from(p))
                .map(|(_, d)| d),
            abort: self
                .abort
                .filter(|&(p, _)| roll_abort < f64::from(p))
                .map(|(_, s)| s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_policy::{FaultAbort, FaultDelay};

    #[test]
    fn percentages_pick_calls() {
        let spec = FaultSpec {
            delay: Some(FaultDelay {
                percent: 25,
                duration: weir_policy::duration::Duration(Duration::from_millis(100)),
            }),
            abort: Some(FaultAbort {
                percent: 10,
                status: 503,
            }),
        };
        let f = Fault::compile(&spec).expect("active");
        assert_eq!(
            f.decide(24.9, 9.9),
            Injected {
                delay: Some(Duration::from_millis(100)),
                abort: Some(503)
            }
        );
        assert_eq!(
            f.decide(25.0, 10.0),
            Injected {
                delay: None,
                abort: None
            }
        );
        assert!(Fault::compile(&FaultSpec::default()).is_none());
    }
}
