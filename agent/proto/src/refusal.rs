//! Why an agent refused something: one reason per check, whichever layer
//! makes it (a core, the transport, the API). The snake_case label is the
//! metric label (`armillary_rejected_total{reason="..."}`), the `reason`
//! field of logs and the key of `rejected` in the status; the runtime maps
//! the API's reasons to HTTP statuses. Labels come from the variant, never
//! from an error's text.

use std::fmt;

macro_rules! refusals {
    ($($(#[$doc:meta])* $variant:ident => $label:literal,)+) => {
        /// One reason for refusing an input.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Refusal {
            $($(#[$doc])* $variant,)+
        }

        impl Refusal {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Refusal] = &[$(Refusal::$variant,)+];

            /// The snake_case label of metrics and logs.
            pub fn label(self) -> &'static str {
                match self {
                    $(Refusal::$variant => $label,)+
                }
            }
        }
    };
}

refusals! {
    // Rows and messages from peers, refused by the gossip core.
    /// A row for a zone that is not on this agent's path.
    RowOffPath => "row_off_path",
    /// A row whose issuer is outside the row's zone.
    RowIssuerOutsideZone => "row_issuer_outside_zone",
    /// A row issued further ahead of this agent's clock than the skew allowed.
    RowFromFuture => "row_from_future",
    /// A zone row computed from older inputs than the fresh one held.
    ZoneRowFromOlderInputs => "zone_row_from_older_inputs",
    /// A new child for a zone table that holds its most children.
    ZoneTableFull => "zone_table_full",
    /// Gossip from an agent whose zone clashes with ours (same leaf, or one
    /// contains the other).
    ClashingZone => "clashing_zone",
    /// A push for a zone this agent is not in.
    PushOutsideZone => "push_outside_zone",
    /// An AFC a row carries whose scope has no room left here.
    AfcScopeFull => "afc_scope_full",
    /// A row this agent would have issued, had its receivers not refused it.
    RowNotIssued => "row_not_issued",
    /// A sensor reading that would not travel (bad name, reserved, out of bounds).
    InvalidSensor => "invalid_sensor",
    /// A saved AFC that no longer passes the bounds or the keys.
    InvalidSavedAfc => "invalid_saved_afc",
    /// A saved attribute that no longer passes the row limits.
    InvalidSavedAttr => "invalid_saved_attr",
    /// A service's saved state that it refused at restore.
    InvalidSavedState => "invalid_saved_state",

    // Signatures and certificates, refused by the security checks.
    /// A row or AFC without a certificate or signature where keys are on.
    Unsigned => "unsigned",
    /// A signature that does not verify.
    BadSignature => "bad_signature",
    /// A certificate that does not chain to a trust anchor, or the wrong kind.
    UntrustedCert => "untrusted_cert",
    /// A certificate outside its validity (or an AFC issued in the future).
    ExpiredCert => "expired_cert",
    /// A row signed by an agent other than its issuer (the issuer is
    /// outside the signer's certificate).
    IssuerOutsideZone => "issuer_outside_zone",
    /// An AFC signed by someone not allowed AFCs in its scope.
    AfcNotAllowed => "afc_not_allowed",

    // Connections and messages, refused by the transport.
    /// A contact address that is not a socket address.
    BadContactAddress => "bad_contact_address",
    /// A message longer than the largest accepted.
    OversizedMessage => "oversized_message",
    /// A stream that ended or stalled before its message did.
    TruncatedMessage => "truncated_message",
    /// A message that does not decode (or fails validation).
    MalformedMessage => "malformed_message",
    /// A message in an envelope format this agent does not read.
    UnknownVersion => "unknown_version",
    /// A peer or message of another cluster.
    WrongCluster => "wrong_cluster",
    /// A message for a service this agent does not run.
    UnknownService => "unknown_service",
    /// A message the core's inbound queue had no room for.
    InboundQueueFull => "inbound_queue_full",
    /// A hello that could not be exchanged or read.
    BadHello => "bad_hello",
    /// A hello that did not come in time.
    HelloTimeout => "hello_timeout",
    /// A peer that sent messages before its hello.
    UnauthenticatedPeer => "unauthenticated_peer",
    /// A peer whose certificate does not verify under our anchors.
    UntrustedPeer => "untrusted_peer",
    /// A peer certified as something other than an agent.
    PeerNotAgent => "peer_not_agent",
    /// A hello whose signature over the session does not verify.
    BadHelloSignature => "bad_hello_signature",

    // Requests, refused by the API.
    /// A request for a zone that is not on this agent's path (404).
    ApiUnknownZone => "api_unknown_zone",
    /// An AFC whose scope does not contain this agent (400).
    ApiAfcOutOfScope => "api_afc_out_of_scope",
    /// A removal of an AFC this agent does not hold (404).
    ApiAfcNotFound => "api_afc_not_found",
    /// An AFC for a scope that holds its most AFCs (409).
    ApiAfcScopeFull => "api_afc_scope_full",
    /// An AFC too large, or for a scope out of bytes (413).
    ApiAfcTooLarge => "api_afc_too_large",
    /// An AFC that is not valid (400).
    ApiAfcInvalid => "api_afc_invalid",
    /// An AFC change that keys or rights refuse (403).
    ApiAfcRefused => "api_afc_refused",
    /// An attribute over a size limit (413).
    ApiAttrTooLarge => "api_attr_too_large",
    /// An attribute with a bad name or value (400).
    ApiAttrInvalid => "api_attr_invalid",
    /// A request that is not well formed (400).
    ApiBadRequest => "api_bad_request",
    /// A `Host` that does not name this API (421).
    ApiBadHost => "api_bad_host",
    /// A missing or wrong bearer token (401).
    ApiUnauthorized => "api_unauthorized",
    /// A body not declared `application/json` (415).
    ApiBadContentType => "api_bad_content_type",
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn labels_are_unique_snake_case() {
        let mut seen = HashSet::new();
        for r in Refusal::ALL {
            let l = r.label();
            assert!(seen.insert(l), "{l} twice");
            assert!(
                l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && !l.starts_with('_'),
                "{l} is not snake_case"
            );
            assert_eq!(r.to_string(), l);
        }
    }
}
