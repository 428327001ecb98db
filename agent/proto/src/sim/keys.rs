//! Keys for a secure simulation: a throwaway root authority that certifies
//! every simulated agent and signs the AFCs the scenario installs, as
//! `armillary dev --secure` does for real agents.
//!
//! The keys are drawn from the run's seed, not the operating system, so a
//! secure run is as repeatable as any other. They protect nothing.

use super::clock::EPOCH;
use crate::afc::AfcCert;
use crate::path::ZonePath;
use crate::row::Micros;
use crate::security::{CertKind, Certificate, DAY, Identity, Security, sign_afc};
use ed25519_dalek::SigningKey;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::sync::Arc;

/// Certificates are valid from a day before the simulated epoch...
const VALID_FROM: Micros = EPOCH - DAY;
/// ...for a year: far beyond any simulated run.
const VALID_UNTIL: Micros = EPOCH + 365 * DAY;

/// The root authority of one simulated system.
pub struct SimAuthority {
    identity: Identity,
    seed: u64,
}

fn key_from(seed: u64, index: u64) -> SigningKey {
    let mut rng =
        SmallRng::seed_from_u64(seed ^ 0x6b65_7973 ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    SigningKey::from_bytes(&bytes)
}

impl SimAuthority {
    /// A root authority whose key comes from `seed`.
    pub fn new(seed: u64) -> SimAuthority {
        let key = key_from(seed, u64::MAX);
        let cert = Arc::new(Certificate::self_signed(
            &key,
            &ZonePath::root(),
            VALID_FROM,
            VALID_UNTIL,
        ));
        SimAuthority {
            identity: Identity {
                key,
                anchor: cert.clone(),
                cert,
            },
            seed,
        }
    }

    /// Security for agent number `index` at `leaf`: its own key, certified
    /// by this authority, trusting it.
    pub fn agent(&self, index: usize, leaf: &ZonePath) -> Arc<Security> {
        let key = key_from(self.seed, index as u64);
        let cert = self
            .identity
            .issue(
                CertKind::Agent,
                leaf.as_str(),
                key.verifying_key().to_bytes(),
                VALID_FROM,
                VALID_UNTIL,
            )
            .expect("the root authority certifies any zone");
        let id = Identity {
            key,
            cert: Arc::new(cert),
            anchor: self.identity.anchor.clone(),
        };
        Arc::new(Security::for_agent(id, leaf, EPOCH).expect("fresh keys verify"))
    }

    /// Signs an AFC as the authority (scope: anything).
    pub fn sign(&self, mut afc: AfcCert) -> AfcCert {
        sign_afc(&self.identity, &mut afc);
        afc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_keys_and_they_verify() {
        let leaf = ZonePath::parse("/z00/a01").unwrap();
        let a = SimAuthority::new(3).agent(1, &leaf);
        let b = SimAuthority::new(3).agent(1, &leaf);
        assert_eq!(a.identity().cert, b.identity().cert);
        assert_ne!(
            a.identity().cert,
            SimAuthority::new(4).agent(1, &leaf).identity().cert
        );
        let auth = SimAuthority::new(3);
        let afc = auth.sign(AfcCert::new(
            ZonePath::root(),
            "x",
            "SELECT MAX(x) AS x",
            EPOCH,
        ));
        a.verify_new_afc(&afc, EPOCH + 5).unwrap();
    }
}
