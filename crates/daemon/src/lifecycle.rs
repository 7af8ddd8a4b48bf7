//! The sandbox lifecycle: one enum, one transition table.

use serde::{Deserialize, Serialize};

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its VM is being restored or booted.
    Creating,
    /// Its agent answers; it takes requests.
    Running,
    /// Its vCPUs are stopped (while it is forked).
    Paused,
    /// It is being destroyed.
    Stopping,
    /// It is gone (destroyed on request or by its TTL).
    Stopped,
    /// It died or could not be created.
    Failed,
}

impl State {
    /// Every state, for tables and tests.
    pub const ALL: [State; 6] = [State::Creating, State::Running, State::Paused, State::Stopping, State::Stopped, State::Failed];

    /// Whether a sandbox may go from `self` to `to`.
    pub fn valid_transition(self, to: State) -> bool {
        use State::*;
        matches!(
            (self, to),
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

    /// Whether it can take exec and file requests.
    pub fn can_exec(self) -> bool {
        self == State::Running
    }

    /// Whether it is over (no VM behind it).
    pub fn is_final(self) -> bool {
        matches!(self, State::Stopped | State::Failed)
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::State::{self, *};

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
