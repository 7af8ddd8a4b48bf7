//! The sandbox lifecycle: the API's states ([`State`], defined in `kiln-api`) and one
//! transition table ([`Lifecycle`]).

/// The states themselves are the API's: a sandbox's `state` on the wire is one of these.
pub use kiln_api::SandboxState as State;

/// The transition table, and what each state allows.
pub trait Lifecycle {
    /// Whether a sandbox may go from `self` to `to`.
    fn valid_transition(&self, to: State) -> bool;
    /// Whether it can take exec and file requests.
    fn can_exec(&self) -> bool;
    /// Whether it is over (no VM behind it).
    fn is_final(&self) -> bool;
}

impl Lifecycle for State {
    fn valid_transition(&self, to: State) -> bool {
        use State::*;
        matches!(
            (*self, to),
            (Creating, Running)
                | (Creating, Failed)
                | (Creating, Stopping)
                | (Running, Paused)
                | (Running, Stopping)
                | (Running, Failed)
                | (Paused, Running)
                | (Paused, Stopping)
                | (Paused, Failed)
                | (Stopping, Stopped)
                | (Stopping, Failed)
        )
    }

    fn can_exec(&self) -> bool {
        *self == State::Running
    }

    fn is_final(&self) -> bool {
        matches!(*self, State::Stopped | State::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::State::{self, *};
    use super::Lifecycle;

    #[test]
    fn every_pair() {
        // (from, to, allowed) for all 36 pairs.
        let allowed = [
            (Creating, Running),
            (Creating, Failed),
            (Creating, Stopping),
            (Running, Paused),
            (Running, Stopping),
            (Running, Failed),
            (Paused, Running),
            (Paused, Stopping),
            (Paused, Failed),
            (Stopping, Stopped),
            (Stopping, Failed),
        ];
        for from in State::ALL {
            for to in State::ALL {
                assert_eq!(from.valid_transition(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
        for s in State::ALL {
            assert!(!s.valid_transition(s), "{s:?} -> itself");
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        assert!(Stopped.is_final() && Failed.is_final() && !Running.is_final());
        assert!(Running.can_exec() && !Paused.can_exec());
    }
}
