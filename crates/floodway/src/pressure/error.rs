use std::fmt;

use super::Level;

/// A pressure configuration that cannot work.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum PressureConfigError {
    /// A level's exit watermark is not below its enter watermark (no hysteresis band).
    NoBand {
        /// The level with the bad pair.
        level: Level,
    },
    /// The enter watermarks do not rise strictly from one level to the next.
    NotIncreasing {
        /// The level whose enter watermark is not above the previous level's.
        level: Level,
    },
    /// A watermark is negative, infinite or NaN.
    NotFinite {
        /// The level with the bad value.
        level: Level,
    },
}

impl fmt::Display for PressureConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PressureConfigError::NoBand { level } => {
                write!(
                    f,
                    "level {level}: exit watermark must be below enter watermark"
                )
            }
            PressureConfigError::NotIncreasing { level } => write!(
                f,
                "level {level}: enter watermark must be above the previous level's"
            ),
            PressureConfigError::NotFinite { level } => {
                write!(
                    f,
                    "level {level}: watermarks must be finite and not negative"
                )
            }
        }
    }
}

impl std::error::Error for PressureConfigError {}
