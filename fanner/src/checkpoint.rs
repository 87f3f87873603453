//! What a shard lease's checkpoint holds: the shard's main cursor and the cursors of the targets
//! that fell behind it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A place in a shard: after the record with this sequence number, or (`None`) before the first.
pub type Position = Option<String>;

/// The JSON stored as a `fanner` lease's checkpoint.
///
/// Meaning: every record at or before `main` has been delivered to every stream the route table
/// sent it to, except the streams in `behind`, each of which has received every record meant for
/// it up to its own position. Nothing else is promised, so restarting from here loses nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Format version.
    pub v: u32,
    pub main: Position,
    /// The shard is closed and the main cursor has reached its end: child shards may start.
    #[serde(default)]
    pub main_done: bool,
    /// Backing stream name → its own position, for streams that fell behind `main`.
    #[serde(default)]
    pub behind: BTreeMap<String, Position>,
}

pub const VERSION: u32 = 1;

impl Checkpoint {
    /// Reads a checkpoint of this format. Another format is named as such (it was written by
    /// another release), whatever else differs in it.
    pub fn parse(text: &str) -> Result<Checkpoint, String> {
        #[derive(Deserialize)]
        struct Version {
            v: u32,
        }
        let unreadable =
            |error: serde_json::Error| format!("unreadable checkpoint {text:.200?}: {error}");
        let version: Version = serde_json::from_str(text).map_err(unreadable)?;
        if version.v != VERSION {
            return Err(format!(
                "checkpoint format {} is not {VERSION}: written by another version",
                version.v
            ));
        }
        serde_json::from_str(text).map_err(unreadable)
    }

    pub fn to_json(&self) -> String {
        // A struct of strings and maps of strings always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Every record of the shard has been delivered everywhere it was due: nothing left to do.
    pub fn finished(&self) -> bool {
        self.main_done && self.behind.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let checkpoint = Checkpoint {
            v: VERSION,
            main: Some("42".to_owned()),
            main_done: false,
            behind: [
                ("fanner-a".to_owned(), None),
                ("fanner-b".to_owned(), Some("7".to_owned())),
            ]
            .into(),
        };
        let json = checkpoint.to_json();
        assert_eq!(Checkpoint::parse(&json), Ok(checkpoint));
        assert!(Checkpoint::parse("42").is_err());
        assert!(Checkpoint::parse(r#"{"v":2,"main":null}"#).is_err());
        assert_eq!(
            Checkpoint::parse(r#"{"v":1,"main":null}"#).map(|c| c.finished()),
            Ok(false)
        );
    }
}
