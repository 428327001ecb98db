//! Why a certificate, key or signature was refused.

use super::cert::{MAX_CERT_BYTES, MAX_CHAIN};

/// A certificate or chain that does not hold, or a certificate that cannot be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityError {
    #[error("the signature on the certificate of {0} does not verify")]
    BadSignature(String),
    #[error(
        "the certificate of {0} does not lead to a trusted authority: give this side the anchor.cert of the authority that issued it"
    )]
    UntrustedAnchor(String),
    #[error("the certificate of {subject} expired at {expires}; issue a new one")]
    Expired { subject: String, expires: String },
    #[error(
        "the certificate of {subject} is not valid before {issued}; check this machine's clock"
    )]
    NotYetValid { subject: String, issued: String },
    #[error("{what} lies outside the zone {zone} of the authority that signs it")]
    OutsideZone { what: String, zone: String },
    #[error(
        "the certificate of {subject} is signed by a {signer} certificate; only authorities sign"
    )]
    NotAnAuthority {
        subject: String,
        signer: &'static str,
    },
    #[error("a certificate chain of {0} or more links; at most {MAX_CHAIN} are allowed")]
    TooDeep(usize),
    #[error("a certificate of {0} bytes; at most {MAX_CERT_BYTES} are allowed")]
    TooLarge(usize),
    #[error("malformed certificate: {0}")]
    Malformed(String),
    #[error("bad right {0:?}: a right reads afc:<zone path>, e.g. afc:/eu")]
    BadRight(String),
    #[error("bad client name {0:?}: use 1 to 64 letters, digits, '.', '_' and '-'")]
    BadName(String),
}
