//! (being written)

/// Which older connections a new login displaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KickPolicy {
    /// One connection per (user, platform): a newer login on the same platform kicks the older.
    #[default]
    PerPlatform,
    /// One connection per user, whatever the platform.
    PerUser,
    /// Never kick; `sessions.max_per_user` still bounds the count.
    None,
}
