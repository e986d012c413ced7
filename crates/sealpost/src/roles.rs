//! `--roles` on the command line: any of the [`Role`]s, or `all`. The parser knows every role
//! from [`Role::ALL`], so an unknown one is refused with the list before anything starts.

use clap::builder::PossibleValue;
use sealpost_eventstore::names::Role;

/// One value of `--roles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleArg {
    /// Every role.
    All,
    One(Role),
}

impl RoleArg {
    /// The roles a list of arguments selects, in [`Role::ALL`] order, without repeats.
    pub fn resolve(args: &[RoleArg]) -> Vec<Role> {
        Role::ALL
            .iter()
            .copied()
            .filter(|r| {
                args.iter()
                    .any(|a| *a == RoleArg::All || *a == RoleArg::One(*r))
            })
            .collect()
    }
}

impl clap::ValueEnum for RoleArg {
    fn value_variants<'a>() -> &'a [Self] {
        static VARIANTS: std::sync::OnceLock<Vec<RoleArg>> = std::sync::OnceLock::new();
        VARIANTS.get_or_init(|| {
            std::iter::once(RoleArg::All)
                .chain(Role::ALL.iter().map(|r| RoleArg::One(*r)))
                .collect()
        })
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            RoleArg::All => PossibleValue::new("all").help("every role"),
            RoleArg::One(r) => PossibleValue::new(r.as_str()).help(r.description()),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    #[test]
    fn every_role_parses_and_all_means_every_role() {
        for &r in Role::ALL {
            assert_eq!(RoleArg::from_str(r.as_str(), false), Ok(RoleArg::One(r)));
        }
        assert_eq!(RoleArg::resolve(&[RoleArg::All]), Role::ALL.to_vec());
        assert_eq!(
            RoleArg::resolve(&[RoleArg::One(Role::Projector), RoleArg::One(Role::Gateway)]),
            vec![Role::Gateway, Role::Projector]
        );
        assert!(RoleArg::from_str("gatewya", false).is_err());
    }
}
