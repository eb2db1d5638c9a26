//! Process exit codes: the contract between a run and whoever watches the Job.

use std::process::ExitCode;

/// Every way a freezeframe run can end, as the CronJob/Job sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything asked for was done.
    Success,
    /// The run failed: nothing usable was produced.
    Failed,
    /// Input (flags, policy file, ConfigMap) was invalid; nothing was attempted for the invalid parts.
    InvalidInput,
    /// Some of the work succeeded and some failed; the result says which.
    PartiallyFailed,
}

impl Outcome {
    /// The numeric code the process exits with.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Failed => 1,
            Outcome::InvalidInput => 2,
            Outcome::PartiallyFailed => 3,
        }
    }
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> Self {
        ExitCode::from(o.code())
    }
}

/// The worst of several backup outcomes: Failed over PartiallyFailed over Success. Pure.
pub fn worst(outcomes: impl IntoIterator<Item = Outcome>) -> Outcome {
    let rank = |o: Outcome| match o {
        Outcome::Success => 0,
        Outcome::PartiallyFailed => 1,
        Outcome::Failed => 2,
        Outcome::InvalidInput => 3,
    };
    outcomes
        .into_iter()
        .max_by_key(|o| rank(*o))
        .unwrap_or(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_outcomes_then_codes_are_distinct_and_stable() {
        let codes: Vec<u8> = [
            Outcome::Success,
            Outcome::Failed,
            Outcome::InvalidInput,
            Outcome::PartiallyFailed,
        ]
        .iter()
        .map(|o| o.code())
        .collect();
        assert_eq!(codes, vec![0, 1, 2, 3]);
    }

    #[test]
    fn given_mixed_outcomes_when_combined_then_worst_wins_and_none_is_success() {
        assert_eq!(worst([]), Outcome::Success);
        assert_eq!(
            worst([Outcome::Success, Outcome::PartiallyFailed]),
            Outcome::PartiallyFailed
        );
        assert_eq!(
            worst([Outcome::PartiallyFailed, Outcome::Failed, Outcome::Success]),
            Outcome::Failed
        );
    }
}
