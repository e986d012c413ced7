//! Fieldless enums with one snake_case name each, as they appear on the wire (event bodies,
//! subjects, view columns, metrics labels). [`wire_enum!`] gives each such enum `ALL`, `as_str`,
//! `FromStr` and `Display` from one list, so a name is written once and parsed the same way
//! everywhere.

/// A name that is not one of an enum's wire names. The refused value is kept only as a short
/// prefix, so a misplaced phone number cannot travel far in an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} '{value}'; expected one of: {}", expected.join(", "))]
pub struct UnknownName {
    pub kind: &'static str,
    pub value: String,
    pub expected: Vec<&'static str>,
}

impl UnknownName {
    pub fn new(kind: &'static str, value: &str, expected: Vec<&'static str>) -> Self {
        let value = value.chars().take(32).collect();
        Self {
            kind,
            value,
            expected,
        }
    }
}

/// Declares a fieldless enum whose variants each have one wire name.
///
/// ```
/// sealpost_domain::wire_enum! {
///     /// A colour.
///     pub enum Colour: "colour" {
///         Red => "red",
///         DarkBlue => "dark_blue",
///     }
/// }
/// assert_eq!(Colour::DarkBlue.as_str(), "dark_blue");
/// assert_eq!("red".parse::<Colour>(), Ok(Colour::Red));
/// assert_eq!(Colour::ALL.len(), 2);
/// ```
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $kind:literal {
            $( $(#[$vmeta:meta])* $variant:ident => $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::wire::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err($crate::wire::UnknownName::new(
                        $kind,
                        other,
                        vec![$($text),+],
                    )),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
