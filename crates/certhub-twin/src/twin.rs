//! The device twin document and its operations, following Azure IoT Hub's rules:
//!
//! - Updates are JSON merge patches (RFC 7386): objects merge recursively, `null` deletes a
//!   member, any other value (arrays included) replaces. Keys starting with `$` at the top of a
//!   desired or reported patch (`$version`, `$metadata`, echoed by the SDKs) are ignored.
//! - Keys are non-empty, at most 1024 bytes of UTF-8, and contain no control characters
//!   (U+0000-U+001F, U+007F-U+009F), `.`, `$` or space. Strings are at most 4096 bytes.
//! - Depth: the section root (`tags`, `properties.desired`, `properties.reported`) is level 0
//!   and every nested object or array adds a level; 10 levels are allowed. This accepts exactly
//!   the deepest example Azure documents as valid (`tags.one.two...ten.property`).
//! - Sizes are the compact JSON serialisation of a section without `$metadata` and `$version`:
//!   tags at most 8 KiB, desired and reported at most 32 KiB each.
//! - Versions: `desired` and `reported` each carry a `$version` that every patch of that
//!   section increments; the twin `version` (and so the etag) increments on every change.
//! - `$metadata` mirrors the property tree: every object node and leaf carries
//!   `$lastUpdated`, and in desired properties also `$lastUpdatedVersion`.
//!
//! Every operation validates completely, then commits: an `Err` leaves the twin unchanged.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::fmt;

const MAX_KEY_BYTES: usize = 1024;
const MAX_STRING_BYTES: usize = 4096;
const MAX_DEPTH: usize = 10;
const LAST_UPDATED: &str = "$lastUpdated";
const LAST_UPDATED_VERSION: &str = "$lastUpdatedVersion";

/// One of the three parts of a twin that callers write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Tags,
    Desired,
    Reported,
}

impl Section {
    /// Where the section sits in the service's twin JSON, as error messages name it.
    pub fn path(self) -> &'static str {
        match self {
            Self::Tags => "tags",
            Self::Desired => "properties.desired",
            Self::Reported => "properties.reported",
        }
    }

    /// The most bytes the section's compact JSON may take.
    pub fn size_limit(self) -> usize {
        match self {
            Self::Tags => 8 * 1024,
            Self::Desired | Self::Reported => 32 * 1024,
        }
    }

    /// Whether `$` keys at the top of a patch are silently dropped (the SDKs echo `$version`
    /// and `$metadata` back into desired and reported properties; tags have no such keys).
    fn ignores_dollar_keys(self) -> bool {
        !matches!(self, Self::Tags)
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tags => "tags",
            Self::Desired => "desired properties",
            Self::Reported => "reported properties",
        })
    }
}

/// Why a twin operation was refused. Messages name the offending path and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwinError {
    #[error(
        "{what} must be a JSON object, not {found}: send an object of names and values, e.g. {{\"name\": \"value\"}}"
    )]
    NotAnObject { what: String, found: &'static str },
    #[error("{parent} has a member with an empty key: property names need at least one character")]
    EmptyKey { parent: String },
    #[error(
        "the key starting {start:?} in {parent} is {len} bytes; the limit is {MAX_KEY_BYTES}: use a shorter property name"
    )]
    KeyTooLong {
        parent: String,
        start: String,
        len: usize,
    },
    #[error(
        "the key {path:?} contains {}; keys cannot contain '.', '$', spaces or control characters: rename the property",
        describe_char(*.character)
    )]
    ForbiddenKeyCharacter { path: String, character: char },
    #[error(
        "the string at {path} is {len} bytes; the limit is {MAX_STRING_BYTES}: store a shorter value"
    )]
    StringTooLong { path: String, len: usize },
    #[error(
        "{path} is nested more than {MAX_DEPTH} levels below {}: flatten the structure",
        .section.path()
    )]
    TooDeep { path: String, section: Section },
    #[error(
        "the twin's {section} would be {size} bytes; the limit is {limit}: remove members or send a smaller patch"
    )]
    TooLarge {
        section: Section,
        size: usize,
        limit: usize,
    },
    #[error(
        "reported properties are written by the device only: remove properties.reported from the request"
    )]
    ReportedFromService,
    #[error(
        "{path}: top-level desired property names starting with '$' are reserved for the hub ($version, $metadata): rename the property"
    )]
    ReservedKey { path: String },
}

fn describe_char(c: char) -> String {
    match c {
        ' ' => "a space".to_owned(),
        '.' | '$' => format!("'{c}'"),
        _ => format!("the control character U+{:04X}", u32::from(c)),
    }
}

/// A device twin as the store keeps it (serialised as one JSON document).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwinState {
    version: i64,
    tags: Map<String, Value>,
    desired: Properties,
    reported: Properties,
}

/// Desired or reported properties with their `$version` and `$metadata` tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Properties {
    version: i64,
    values: Map<String, Value>,
    metadata: Map<String, Value>,
}

impl TwinState {
    /// An empty twin created at `now`: versions 1, no tags or properties.
    pub fn new(now: &str) -> Self {
        Self {
            version: 1,
            tags: Map::new(),
            desired: Properties::new(Section::Desired, now),
            reported: Properties::new(Section::Reported, now),
        }
    }

    /// The twin version, incremented on every change.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The `$version` of the desired properties.
    pub fn desired_version(&self) -> i64 {
        self.desired.version
    }

    /// The `$version` of the reported properties.
    pub fn reported_version(&self) -> i64 {
        self.reported.version
    }

    pub fn tags(&self) -> &Map<String, Value> {
        &self.tags
    }

    pub fn desired(&self) -> &Map<String, Value> {
        &self.desired.values
    }

    pub fn reported(&self) -> &Map<String, Value> {
        &self.reported.values
    }

    /// Merges a service's patch into the desired properties and returns the notification body
    /// for the device: the applied patch plus the new `"$version"`.
    pub fn patch_desired(&mut self, patch: &Value, now: &str) -> Result<Value, TwinError> {
        let patch = checked_members(Section::Desired, patch)?;
        self.desired = self.desired.patched(Section::Desired, &patch, now)?;
        self.bump_version();
        Ok(notification(patch, self.desired.version))
    }

    /// Merges a device's patch into the reported properties and returns their new `$version`.
    pub fn patch_reported(&mut self, patch: &Value, now: &str) -> Result<i64, TwinError> {
        let patch = checked_members(Section::Reported, patch)?;
        self.reported = self.reported.patched(Section::Reported, &patch, now)?;
        self.bump_version();
        Ok(self.reported.version)
    }

    /// Merges a service's patch into the tags.
    pub fn patch_tags(&mut self, patch: &Value) -> Result<(), TwinError> {
        let patch = checked_members(Section::Tags, patch)?;
        let mut tags = self.tags.clone();
        merge_plain(&mut tags, &patch);
        check_size(Section::Tags, &tags)?;
        self.tags = tags;
        self.bump_version();
        Ok(())
    }

    /// Replaces the tags and/or the desired properties wholesale (a twin PUT); `None` keeps a
    /// section as it is. When desired properties are given, returns the device notification:
    /// the full new desired set, `null` for every removed member (so a device applying it as a
    /// patch converges) and the new `"$version"`. With neither given, nothing changes.
    pub fn replace(
        &mut self,
        tags: Option<&Value>,
        desired: Option<&Value>,
        now: &str,
    ) -> Result<Option<Value>, TwinError> {
        let tags = tags
            .map(|tags| replacement(Section::Tags, tags))
            .transpose()?;
        let desired_patch = desired
            .map(|desired| {
                replacement(Section::Desired, desired)
                    .map(|new| convergence_patch(&self.desired.values, &new))
            })
            .transpose()?;
        let desired = desired_patch
            .as_ref()
            .map(|patch| self.desired.patched(Section::Desired, patch, now))
            .transpose()?;
        if tags.is_none() && desired.is_none() {
            return Ok(None);
        }

        if let Some(tags) = tags {
            self.tags = tags;
        }
        self.bump_version();
        Ok(desired.zip(desired_patch).map(|(desired, patch)| {
            self.desired = desired;
            notification(patch, self.desired.version)
        }))
    }

    /// What a device gets for a twin GET: desired and reported properties with their
    /// `$version`, without `$metadata` or tags.
    pub fn device_view(&self) -> Value {
        json!({
            "desired": self.desired.view(false),
            "reported": self.reported.view(false),
        })
    }

    /// The twin part of the service's twin JSON: `version`, `tags` and both property sections
    /// with `$metadata` and `$version`. The server adds the identity fields.
    pub fn service_view(&self) -> Value {
        json!({
            "version": self.version,
            "tags": self.tags,
            "properties": {
                "desired": self.desired.view(true),
                "reported": self.reported.view(true),
            },
        })
    }

    /// The twin's etag: standard base64 of the version as 8 big-endian bytes, the shape
    /// Azure's twin etags have (version 1 is `AAAAAAAAAAE=`).
    pub fn etag(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.version.to_be_bytes())
    }

    fn bump_version(&mut self) {
        // Saturates rather than wraps: a twin would need 2^63 updates to get there.
        self.version = self.version.saturating_add(1);
    }
}

impl Properties {
    fn new(section: Section, now: &str) -> Self {
        Self {
            version: 1,
            values: Map::new(),
            metadata: Stamp::new(section, now, 1).node(),
        }
    }

    /// The properties after merging an already checked `patch`; `self` is left as it is.
    fn patched(
        &self,
        section: Section,
        patch: &Map<String, Value>,
        now: &str,
    ) -> Result<Self, TwinError> {
        let version = self.version.saturating_add(1);
        let mut next = self.clone();
        next.version = version;
        merge_tracked(
            &mut next.values,
            &mut next.metadata,
            patch,
            &Stamp::new(section, now, version),
        );
        check_size(section, &next.values)?;
        Ok(next)
    }

    fn view(&self, with_metadata: bool) -> Value {
        let mut view = self.values.clone();
        if with_metadata {
            view.insert("$metadata".to_owned(), Value::Object(self.metadata.clone()));
        }
        view.insert("$version".to_owned(), self.version.into());
        Value::Object(view)
    }
}

/// The `$metadata` entry that one update writes.
struct Stamp<'a> {
    now: &'a str,
    /// `$lastUpdatedVersion`, which only desired properties carry.
    version: Option<i64>,
}

impl<'a> Stamp<'a> {
    fn new(section: Section, now: &'a str, version: i64) -> Self {
        let version = (section == Section::Desired).then_some(version);
        Self { now, version }
    }

    fn mark(&self, node: &mut Map<String, Value>) {
        node.insert(LAST_UPDATED.to_owned(), self.now.into());
        if let Some(version) = self.version {
            node.insert(LAST_UPDATED_VERSION.to_owned(), version.into());
        }
    }

    fn node(&self) -> Map<String, Value> {
        let mut node = Map::new();
        self.mark(&mut node);
        node
    }

    /// The metadata tree for a freshly written value.
    fn tree_for(&self, value: &Value) -> Value {
        let mut node = self.node();
        if let Value::Object(members) = value {
            for (key, member) in members {
                node.insert(key.clone(), self.tree_for(member));
            }
        }
        Value::Object(node)
    }
}

/// RFC 7386 merge of `patch` into `target`.
fn merge_plain(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Object(members) => match target.get_mut(key) {
                Some(Value::Object(existing)) => merge_plain(existing, members),
                _ => {
                    target.insert(key.clone(), Value::Object(without_nulls(members)));
                }
            },
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
}

/// RFC 7386 merge of `patch` into `target` that also stamps `metadata`, the metadata node of
/// `target`, along every path the patch touches.
fn merge_tracked(
    target: &mut Map<String, Value>,
    metadata: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    stamp: &Stamp<'_>,
) {
    stamp.mark(metadata);
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(key);
                metadata.remove(key);
            }
            Value::Object(members) => match target.get_mut(key) {
                Some(Value::Object(existing)) => {
                    let mut node = match metadata.remove(key) {
                        Some(Value::Object(node)) => node,
                        _ => Map::new(),
                    };
                    merge_tracked(existing, &mut node, members, stamp);
                    metadata.insert(key.clone(), Value::Object(node));
                }
                _ => {
                    let fresh = Value::Object(without_nulls(members));
                    metadata.insert(key.clone(), stamp.tree_for(&fresh));
                    target.insert(key.clone(), fresh);
                }
            },
            other => {
                target.insert(key.clone(), other.clone());
                metadata.insert(key.clone(), stamp.tree_for(other));
            }
        }
    }
}

/// An object patch applied to nothing: its `null` members (at any object level) dropped.
fn without_nulls(members: &Map<String, Value>) -> Map<String, Value> {
    members
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(key, value)| {
            let value = match value {
                Value::Object(inner) => Value::Object(without_nulls(inner)),
                other => other.clone(),
            };
            (key.clone(), value)
        })
        .collect()
}

/// The patch that turns `old` into `new` (which has no `null` members): all of `new`, plus a
/// `null` for every member of `old` that `new` lacks, at every object level.
fn convergence_patch(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut patch: Map<String, Value> = old
        .keys()
        .filter(|key| !new.contains_key(*key))
        .map(|key| (key.clone(), Value::Null))
        .collect();
    for (key, value) in new {
        let entry = match (old.get(key), value) {
            (Some(Value::Object(before)), Value::Object(after)) => {
                Value::Object(convergence_patch(before, after))
            }
            _ => value.clone(),
        };
        patch.insert(key.clone(), entry);
    }
    patch
}

fn notification(mut patch: Map<String, Value>, version: i64) -> Value {
    patch.insert("$version".to_owned(), version.into());
    Value::Object(patch)
}

/// A validated replacement for a whole section, `null` members dropped.
fn replacement(section: Section, body: &Value) -> Result<Map<String, Value>, TwinError> {
    let members = without_nulls(&checked_members(section, body)?);
    check_size(section, &members)?;
    Ok(members)
}

/// The members of a patch for `section` that apply, after checking every key and value.
fn checked_members(section: Section, body: &Value) -> Result<Map<String, Value>, TwinError> {
    let Value::Object(members) = body else {
        return Err(TwinError::NotAnObject {
            what: section.path().to_owned(),
            found: json_kind(body),
        });
    };
    // The service may send desired properties back as it read them, with "$version" and
    // "$metadata"; any other top-level '$' key is a mistake worth saying rather than dropping.
    if section == Section::Desired
        && let Some(key) = members
            .keys()
            .find(|k| k.starts_with('$') && *k != "$version" && *k != "$metadata")
    {
        return Err(TwinError::ReservedKey {
            path: format!("{}.{key}", section.path()),
        });
    }
    let applied: Map<String, Value> = members
        .iter()
        .filter(|(key, _)| !(section.ignores_dollar_keys() && key.starts_with('$')))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    check_members(section, &applied, &mut section.path().to_owned(), 0)?;
    Ok(applied)
}

/// Checks the members of the object at `path`, which is `depth` levels below the section.
fn check_members(
    section: Section,
    members: &Map<String, Value>,
    path: &mut String,
    depth: usize,
) -> Result<(), TwinError> {
    for (key, value) in members {
        check_key(key, path)?;
        let parent_len = path.len();
        path.push('.');
        path.push_str(key);
        check_value(section, value, path, depth)?;
        path.truncate(parent_len);
    }
    Ok(())
}

fn check_key(key: &str, parent: &str) -> Result<(), TwinError> {
    if key.is_empty() {
        return Err(TwinError::EmptyKey {
            parent: parent.to_owned(),
        });
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(TwinError::KeyTooLong {
            parent: parent.to_owned(),
            start: key.chars().take(32).collect(),
            len: key.len(),
        });
    }
    if let Some(character) = key
        .chars()
        .find(|c| matches!(c, '.' | '$' | ' ') || c.is_control())
    {
        return Err(TwinError::ForbiddenKeyCharacter {
            path: format!("{parent}.{key}"),
            character,
        });
    }
    Ok(())
}

/// Checks the value at `path`, a member of an object `depth` levels below the section.
fn check_value(
    section: Section,
    value: &Value,
    path: &mut String,
    depth: usize,
) -> Result<(), TwinError> {
    let nested = || {
        if depth < MAX_DEPTH {
            Ok(depth + 1)
        } else {
            Err(TwinError::TooDeep {
                path: path.clone(),
                section,
            })
        }
    };
    match value {
        Value::String(s) if s.len() > MAX_STRING_BYTES => Err(TwinError::StringTooLong {
            path: path.clone(),
            len: s.len(),
        }),
        Value::Object(members) => {
            let depth = nested()?;
            check_members(section, members, path, depth)
        }
        Value::Array(items) => {
            let depth = nested()?;
            for (index, item) in items.iter().enumerate() {
                let parent_len = path.len();
                path.push_str(&format!("[{index}]"));
                check_value(section, item, path, depth)?;
                path.truncate(parent_len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_size(section: Section, members: &Map<String, Value>) -> Result<(), TwinError> {
    // Serialising a map of JSON values cannot fail; if it did, refuse rather than accept.
    let size = serde_json::to_vec(members).map_or(usize::MAX, |bytes| bytes.len());
    let limit = section.size_limit();
    if size > limit {
        return Err(TwinError::TooLarge {
            section,
            size,
            limit,
        });
    }
    Ok(())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Splits a service twin request body (`{"tags": {...}, "properties": {"desired": {...}}}`,
/// identity fields such as `deviceId`, `etag` or `version` ignored) into its tags and desired
/// properties; a `null` section counts as absent. Reported properties belong to the device: a
/// `reported` section that would write anything is refused, while an empty one or one holding
/// only `$` keys (the SDKs send `{}` or echo `$version` and `$metadata`) is ignored.
pub fn service_patch_parts(body: &Value) -> Result<(Option<&Value>, Option<&Value>), TwinError> {
    let Value::Object(members) = body else {
        return Err(TwinError::NotAnObject {
            what: "the twin request body".to_owned(),
            found: json_kind(body),
        });
    };
    let tags = members.get("tags").filter(|tags| !tags.is_null());
    let desired = match members.get("properties") {
        None | Some(Value::Null) => None,
        Some(Value::Object(properties)) => {
            if properties.get("reported").is_some_and(writes_properties) {
                return Err(TwinError::ReportedFromService);
            }
            properties
                .get("desired")
                .filter(|desired| !desired.is_null())
        }
        Some(other) => {
            return Err(TwinError::NotAnObject {
                what: "properties".to_owned(),
                found: json_kind(other),
            });
        }
    };
    Ok((tags, desired))
}

/// Whether a `reported` section in a service request would write anything.
fn writes_properties(reported: &Value) -> bool {
    match reported {
        Value::Null => false,
        Value::Object(members) => members.keys().any(|key| !key.starts_with('$')),
        _ => true,
    }
}
