//! The words of SPEC §2 as types: hopper states, closed-row outcomes and campaign states.
//! Their string forms are part of the public interface (CLI, API, metrics, database).

use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownWord { kind: stringify!($name), word: s.to_string() }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {word:?}")]
pub struct UnknownWord {
    pub kind: &'static str,
    pub word: String,
}

string_enum!(
    /// Where a (campaign, contact) row is: exactly one state at a time.
    HopperState {
        Fresh => "fresh",
        Retry => "retry",
        Pending => "pending",
        Closed => "closed",
    }
);

string_enum!(
    /// Why a row is closed.
    Outcome {
        Answered => "answered",
        Replied => "replied",
        NoAnswer => "no_answer",
        Failed => "failed",
        Exhausted => "exhausted",
        Expired => "expired",
        OptedOut => "opted_out",
        Blacklisted => "blacklisted",
        NoOptIn => "no_opt_in",
        Invalid => "invalid",
        Stopped => "stopped",
    }
);

string_enum!(
    CampaignState {
        Draft => "draft",
        Running => "running",
        Paused => "paused",
        Stopped => "stopped",
        Completed => "completed",
    }
);

/// A state change a user (CLI or API) asks of a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignCommand {
    Start,
    Pause,
    Resume,
    Stop,
}

impl CampaignCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignCommand::Start => "start",
            CampaignCommand::Pause => "pause",
            CampaignCommand::Resume => "resume",
            CampaignCommand::Stop => "stop",
        }
    }
}

/// A refused state change, with the reason a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command} campaign {campaign:?}: {reason}")]
pub struct TransitionRefused {
    pub campaign: String,
    pub command: &'static str,
    pub reason: String,
}

impl CampaignState {
    /// The state machine of SPEC §5.1: draft → running ⇄ paused → stopped / completed.
    /// Stopped and completed are final: a finished campaign is re-run by defining a new one,
    /// so its report stays true.
    pub fn apply(
        self,
        cmd: CampaignCommand,
        campaign: &str,
    ) -> Result<CampaignState, TransitionRefused> {
        use CampaignCommand as C;
        use CampaignState as S;
        let refuse = |reason: &str| TransitionRefused {
            campaign: campaign.to_string(),
            command: cmd.as_str(),
            reason: reason.to_string(),
        };
        match (self, cmd) {
            (S::Draft, C::Start) => Ok(S::Running),
            (S::Running, C::Start) => Err(refuse("it is already running")),
            (S::Paused, C::Start) => Err(refuse("it is paused; use resume")),
            (S::Running, C::Pause) => Ok(S::Paused),
            (S::Paused, C::Pause) => Err(refuse("it is already paused")),
            (S::Draft, C::Pause) => Err(refuse("it has not been started")),
            (S::Paused, C::Resume) => Ok(S::Running),
            (S::Running, C::Resume) => Err(refuse("it is running, not paused")),
            (S::Draft, C::Resume) => Err(refuse("it has not been started; use start")),
            (S::Draft | S::Running | S::Paused, C::Stop) => Ok(S::Stopped),
            (S::Stopped, _) => Err(refuse(
                "it is stopped, which is final; define a new campaign to send again",
            )),
            (S::Completed, _) => Err(refuse(
                "it is completed, which is final; define a new campaign to send again",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for s in HopperState::ALL {
            assert_eq!(s.as_str().parse::<HopperState>().unwrap(), *s);
        }
        for o in Outcome::ALL {
            assert_eq!(o.as_str().parse::<Outcome>().unwrap(), *o);
        }
        for c in CampaignState::ALL {
            assert_eq!(c.as_str().parse::<CampaignState>().unwrap(), *c);
        }
        assert!("open".parse::<HopperState>().is_err());
    }

    #[test]
    fn transitions_and_refusals() {
        use CampaignCommand::*;
        use CampaignState::*;
        assert_eq!(Draft.apply(Start, "c").unwrap(), Running);
        assert_eq!(Running.apply(Pause, "c").unwrap(), Paused);
        assert_eq!(Paused.apply(Resume, "c").unwrap(), Running);
        assert_eq!(Paused.apply(Stop, "c").unwrap(), Stopped);
        let err = Stopped.apply(Start, "renewal").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot start campaign \"renewal\": it is stopped, which is final; define a new campaign to send again"
        );
        assert!(Completed.apply(Resume, "c").is_err());
        assert!(Running.apply(Start, "c").is_err());
        assert!(Draft.apply(Pause, "c").is_err());
    }
}
