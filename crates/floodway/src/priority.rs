use std::fmt;
use std::str::FromStr;

/// The class of an item or request. Higher classes are served first and shed last.
///
/// Ordering follows importance: `Low < Normal < High < Critical`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Background work: the first to be shed.
    Low = 0,
    /// Ordinary work (the default).
    #[default]
    Normal = 1,
    /// Work a user is waiting on.
    High = 2,
    /// Work that must get through: shed only when nothing else is left to shed.
    Critical = 3,
}

impl Priority {
    /// Every class, from the least to the most important.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];

    /// The number of classes.
    pub const COUNT: usize = 4;

    /// A dense index (`Low` = 0 .. `Critical` = 3), for tables indexed by class.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The lower-case name used in headers and configuration (`"critical"`, `"high"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text named no priority class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsePriorityError {
    text: String,
}

impl fmt::Display for ParsePriorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown priority {:?}: expected one of critical, high, normal, low",
            self.text
        )
    }
}

impl std::error::Error for ParsePriorityError {}

impl FromStr for Priority {
    type Err = ParsePriorityError;

    /// Parses a class name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParsePriorityError { text: s.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_parse() {
        assert!(Priority::Critical > Priority::High && Priority::Normal > Priority::Low);
        assert_eq!("HIGH".parse::<Priority>(), Ok(Priority::High));
        assert!("urgent".parse::<Priority>().is_err());
        for (i, p) in Priority::ALL.into_iter().enumerate() {
            assert_eq!(p.index(), i);
        }
    }
}
