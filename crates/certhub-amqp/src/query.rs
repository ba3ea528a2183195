//! What the hub asks of the engine about its links.

use crate::{Engine, LinkId};

impl Engine {
    /// The session (the hub's channel) a link belongs to.
    pub fn session_of(&self, link: LinkId) -> Option<u16> {
        self.links.get(&link.0).map(|l| l.channel)
    }
}
