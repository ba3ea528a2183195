//! What the hub asks of the engine about its links.

use crate::{Engine, LinkId};

impl Engine {
    /// The session (the hub's channel) a link belongs to.
    pub fn session_of(&self, link: LinkId) -> Option<u16> {
        self.links.get(&link.0).map(|l| l.channel)
    }

    /// The link exists and the hub sends on it.
    pub fn is_sending(&self, link: LinkId) -> bool {
        self.links.get(&link.0).is_some_and(|l| !l.receiving)
    }
}
