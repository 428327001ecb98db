//! Rows (Astrolabe's MIBs): one zone's attributes as computed by one issuer at one time.

use crate::afc::AfcCert;
use crate::path::ZonePath;
use crate::security::Certificate;
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};
use zone_sql::{Attrs, Value};

/// Time in microseconds since the Unix epoch (the simulator starts at 0).
pub type Micros = u64;

/// Attributes left out of a row's content hash: they move with the timing of
/// refreshes, differ slightly between representatives, and would otherwise
/// make every refresh look like a change worth re-aggregating and pushing.
const VOLATILE: &[&str] = &["nreporting", "oldest_input"];

/// Most inputs a zone row lists (see [`Row::inputs`]).
pub const MAX_INPUTS: usize = 64;

/// Separates row signatures from every other kind of signed bytes.
const ROW_TAG: &str = "armillary-row-v1";

/// One row of a zone table, as issued and signed by one agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The zone this row describes (its name in the parent table is the last component).
    pub zone: ZonePath,
    /// The agent that computed the row (its leaf path).
    pub issuer: ZonePath,
    /// The issuer's clock when it computed the row.
    pub issued: Micros,
    pub attrs: Attrs,
    /// AFCs carried by this row (those installed in the parent zone, and those on their way up).
    pub afcs: Vec<Arc<AfcCert>>,
    /// For a zone row: the version (issue time) of each child row it was
    /// computed from, by child name; empty for leaf rows and for zones with
    /// more than [`MAX_INPUTS`] children. Another representative replaces
    /// a fresh row only when it holds all of these inputs at least as new,
    /// so a zone row never rolls back to older content.
    #[serde(default, deserialize_with = "zone_sql::intern::deserialize_named")]
    pub inputs: Vec<(Arc<str>, Micros)>,
    /// The issuer's signature over [`Row::signing_bytes`] (empty in insecure mode).
    pub signature: Vec<u8>,
    /// The issuer's agent certificate and its chain, so that any receiver
    /// can check the signature (None in insecure mode and in the simulator).
    #[serde(default)]
    pub cert: Option<Arc<Certificate>>,
    #[serde(skip)]
    cache: RowCache,
}

#[derive(Debug, Default, Clone)]
struct RowCache {
    content: u64,
    issuer: u64,
    encoded_len: usize,
    /// The child name, shared by every digest that names this row.
    name: Arc<str>,
    depth: usize,
    contacts: Option<Arc<[Arc<str>]>>,
    /// The row's encoding, made the first time it is sent (or kept from
    /// the wire): a row sent many times is encoded once.
    wire: OnceLock<Arc<[u8]>>,
}

impl Row {
    /// Builds a row and computes its cached hashes and size.
    pub fn new(
        zone: ZonePath,
        issuer: ZonePath,
        issued: Micros,
        attrs: Attrs,
        afcs: Vec<Arc<AfcCert>>,
    ) -> Row {
        Row {
            zone,
            issuer,
            issued,
            attrs,
            afcs,
            inputs: Vec::new(),
            signature: Vec::new(),
            cert: None,
            cache: RowCache::default(),
        }
        .sealed()
    }

    /// The row with the versions of the inputs it was computed from.
    pub fn with_inputs(mut self, inputs: Vec<(Arc<str>, Micros)>) -> Row {
        self.inputs = inputs;
        self.sealed()
    }

    /// Recomputes the cached fields; called after decoding a row from the wire.
    pub fn sealed(mut self) -> Row {
        self.cache = RowCache {
            content: content_hash(&self.attrs, &self.afcs),
            issuer: stable_hash(self.issuer.as_str()),
            encoded_len: self.compute_encoded_len(),
            name: Arc::from(self.zone.name()),
            depth: self.zone.depth(),
            contacts: match self.attrs.get("contacts") {
                Some(Value::List(l)) => Some(l.clone()),
                _ => None,
            },
            wire: OnceLock::new(),
        };
        self
    }

    /// [`Row::sealed`] for a row just decoded from `bytes`, which it keeps
    /// as its encoding.
    pub(crate) fn sealed_from_wire(self, bytes: &[u8]) -> Row {
        let row = self.sealed();
        let _ = row.cache.wire.set(Arc::from(bytes));
        row
    }

    /// The row's encoding as it travels inside a message.
    pub fn wire(&self) -> &[u8] {
        self.cache
            .wire
            .get_or_init(|| postcard::to_allocvec(self).unwrap_or_default().into())
    }

    /// A hash of what the row says (attributes and carried AFC versions), not who said it or when.
    pub fn content_hash(&self) -> u64 {
        self.cache.content
    }

    /// The issuer's hash, the tie-breaker between rows issued at the same time.
    pub fn issuer_hash(&self) -> u64 {
        self.cache.issuer
    }

    /// The version order: later issue time wins, then the larger issuer hash.
    pub fn version(&self) -> (Micros, u64) {
        (self.issued, self.cache.issuer)
    }

    /// Encoded size in bytes (cached).
    pub fn encoded_len(&self) -> usize {
        self.cache.encoded_len
    }

    /// The child name of this row in its parent table.
    pub fn name(&self) -> &str {
        &self.cache.name
    }

    /// The depth of the zone this row describes (its table is one above).
    pub fn depth(&self) -> usize {
        self.cache.depth
    }

    /// The child name as a shared string.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.cache.name
    }

    pub fn get(&self, attr: &str) -> Option<&Value> {
        self.attrs.get(attr)
    }

    /// Contact addresses of the zone's representatives.
    pub fn contacts(&self) -> &[Arc<str>] {
        self.cache.contacts.as_deref().unwrap_or(&[])
    }

    /// Attaches the issuer's certificate and signature (keeps the cached size right).
    pub fn set_signature(&mut self, cert: Option<Arc<Certificate>>, signature: Vec<u8>) {
        self.cert = cert;
        self.signature = signature;
        self.cache.encoded_len = self.compute_encoded_len();
        self.cache.wire = OnceLock::new();
    }

    /// The bytes an issuer signs: everything but the signature and the
    /// certificate (which the signature is checked against). Carried AFCs
    /// enter by identity and signature; each AFC's signature covers the rest.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let afcs: Vec<_> = self
            .afcs
            .iter()
            .map(|a| (&a.scope, &*a.name, a.issued, a.removed, &a.signature))
            .collect();
        postcard::to_allocvec(&(
            ROW_TAG,
            &self.zone,
            &self.issuer,
            self.issued,
            &self.attrs,
            afcs,
            &self.inputs,
        ))
        .unwrap_or_default()
    }

    fn compute_encoded_len(&self) -> usize {
        // Varint-encoded lengths are approximated by one or two bytes each; the
        // message codec's test checks this stays an upper bound. The first 3
        // bytes are the row's length prefix inside a message.
        3 + 3
            + self.zone.as_str().len()
            + 3
            + self.issuer.as_str().len()
            + 10
            + self.attrs.encoded_len()
            + 2
            + self.afcs.iter().map(|a| a.encoded_len()).sum::<usize>()
            + 2
            + self
                .inputs
                .iter()
                .map(|(n, _)| 2 + n.len() + 10)
                .sum::<usize>()
            + 2
            + self.signature.len()
            + 1
            + self.cert.as_ref().map_or(0, |c| c.encoded_len())
    }
}

/// Hash of a row's content, stable across processes and runs.
pub fn content_hash(attrs: &Attrs, afcs: &[Arc<AfcCert>]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    for (n, v) in attrs.iter() {
        if VOLATILE.contains(&&**n) {
            continue;
        }
        n.hash(&mut h);
        hash_value(v, &mut h);
    }
    for a in afcs {
        a.scope.hash(&mut h);
        a.name.hash(&mut h);
        a.issued.hash(&mut h);
    }
    h.finish()
}

fn hash_value(v: &Value, h: &mut impl Hasher) {
    std::mem::discriminant(v).hash(h);
    match v {
        Value::Null => {}
        Value::Bool(b) => b.hash(h),
        Value::Int(i) | Value::Time(i) | Value::Duration(i) => i.hash(h),
        Value::Float(f) => f.to_bits().hash(h),
        Value::Str(s) => s.hash(h),
        Value::List(l) => l.hash(h),
    }
}

/// A hash of a string that is the same in every process (SipHash with fixed keys).
pub fn stable_hash(s: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_ignores_volatile_attributes_and_metadata() {
        let z = ZonePath::parse("/a/b").unwrap();
        let i = ZonePath::parse("/a/b/h1").unwrap();
        let mut a = Attrs::new();
        a.set("load", 1.5);
        a.set("oldest_input", Value::Time(5));
        let r1 = Row::new(z.clone(), i.clone(), 10, a.clone(), vec![]);
        a.set("oldest_input", Value::Time(9));
        let r2 = Row::new(z.clone(), i.clone(), 20, a.clone(), vec![]);
        assert_eq!(r1.content_hash(), r2.content_hash());
        a.set("load", 2.0);
        let r3 = Row::new(z, i, 20, a, vec![]);
        assert_ne!(r1.content_hash(), r3.content_hash());
        assert!(r2.version() > r1.version());
    }
}
