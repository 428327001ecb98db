//! TLS for the gossip transport. QUIC always encrypts; who a peer is comes
//! from Armillary's own certificates, exchanged on the connection and bound
//! to its TLS session (see [`super::transport::PeerAuth`]). The TLS
//! certificate is therefore a throwaway self-signed one, and the client
//! checks only that the server holds its key (the handshake signature).

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// The ALPN protocol of Armillary's gossip.
pub const ALPN: &[u8] = b"armillary/1";
/// The server name clients ask for (certificates are not checked by name).
pub const SERVER_NAME: &str = "armillary";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("TLS setup failed: {0}")]
pub struct TlsError(String);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Bounds that keep one peer from holding much of our memory.
fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(64u32.into());
    t.max_concurrent_bidi_streams(4u32.into());
    t.stream_receive_window((512u32 * 1024).into());
    t.receive_window((2u32 * 1024 * 1024).into());
    t.send_window(2 * 1024 * 1024);
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("30 s fits"),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    Arc::new(t)
}

/// Server and client configurations for one endpoint.
pub fn configs() -> Result<(quinn::ServerConfig, quinn::ClientConfig), TlsError> {
    let err = |e: &dyn std::fmt::Display| TlsError(e.to_string());
    let ck =
        rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()]).map_err(|e| err(&e))?;
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));

    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| err(&e))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let server = QuicServerConfig::try_from(server).map_err(|e| err(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport_config());

    let algs = provider().signature_verification_algorithms;
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(KeyHolder(algs)))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let client = QuicClientConfig::try_from(client).map_err(|e| err(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport_config());
    Ok((server, client))
}

/// Accepts any server certificate but checks the handshake signature made
/// with its key; identity is checked by Armillary's own hello.
#[derive(Debug)]
struct KeyHolder(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for KeyHolder {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
