//! The security layer's rules, one by one.

use super::*;
use crate::afc::AfcCert;
use crate::row::Row;
use zone_sql::Attrs;

const NOW: Micros = 1_700_000_000_000_000;
const YEAR: Micros = 365 * DAY;

fn p(s: &str) -> ZonePath {
    ZonePath::parse(s).unwrap()
}

fn root(zone: &str) -> Identity {
    Identity::new_root(&p(zone), NOW, NOW + 10 * YEAR)
}

fn agent(auth: &Identity, leaf: &str) -> Identity {
    auth.new_child(CertKind::Agent, leaf, NOW, NOW + YEAR)
        .unwrap()
}

fn client(auth: &Identity, name: &str, allow: &[&str]) -> Identity {
    let allow = allow.iter().map(|r| Right::parse(r).unwrap()).collect();
    auth.new_child(CertKind::Client { allow }, name, NOW, NOW + YEAR)
        .unwrap()
}

fn security(id: Identity) -> Security {
    let trust = Arc::new(id.trust().unwrap());
    Security::new(Arc::new(id), trust)
}

fn row(zone: &str, issuer: &str, afcs: Vec<Arc<AfcCert>>) -> Row {
    let mut a = Attrs::new();
    a.set("load", 0.5);
    Row::new(p(zone), p(issuer), NOW, a, afcs)
}

fn signed_afc(id: &Identity, scope: &str) -> AfcCert {
    let mut a = AfcCert::new(p(scope), "load", "SELECT MAX(load) AS load", NOW);
    sign_afc(id, &mut a);
    a
}

#[test]
fn rows_sign_and_verify_and_tampering_is_caught() {
    let ca = root("/");
    let h7 = security(agent(&ca, "/eu/paris/h7"));
    let checker = security(agent(&ca, "/us/x"));
    let mut r = row("/eu/paris/h7", "/eu/paris/h7", vec![]);
    let unsigned_len = r.encoded_len();
    h7.sign_row(&mut r);
    assert!(r.encoded_len() > unsigned_len + 64);
    assert_eq!(checker.verify_row(&r, NOW), Ok(()));
    // A zone row of its own zone, issued by a member.
    let mut z = row("/eu/paris", "/eu/paris/h7", vec![]);
    h7.sign_row(&mut z);
    assert_eq!(checker.verify_row(&z, NOW), Ok(()));
    // The size estimate stays an upper bound of the real encoding.
    let bytes = postcard::to_allocvec(&r).unwrap();
    assert!(
        r.encoded_len() >= bytes.len(),
        "{} < {}",
        r.encoded_len(),
        bytes.len()
    );
    let back: Row = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(checker.verify_row(&back.sealed(), NOW), Ok(()));

    let mut t = r.clone();
    t.attrs.set("load", 9.0);
    assert_eq!(
        checker.verify_row(&t, NOW).unwrap_err().refusal().label(),
        "bad_signature"
    );
    let mut t = r.clone();
    t.issued += 1;
    assert_eq!(
        checker.verify_row(&t, NOW).unwrap_err().refusal().label(),
        "bad_signature"
    );
    let mut t = r.clone();
    t.signature.clear();
    assert_eq!(
        checker.verify_row(&t, NOW).unwrap_err().refusal().label(),
        "unsigned"
    );
    let t = row("/eu/paris/h7", "/eu/paris/h7", vec![]);
    assert_eq!(
        checker.verify_row(&t, NOW).unwrap_err().refusal().label(),
        "unsigned"
    );
}

#[test]
fn an_issuer_speaks_only_for_its_own_zones() {
    let ca = root("/");
    let us = security(agent(&ca, "/us/x"));
    let checker = Arc::new(security(agent(&ca, "/eu/paris/h1")));
    // Claiming another agent's name.
    let mut r = row("/eu/paris/h7", "/eu/paris/h7", vec![]);
    us.sign_row(&mut r);
    assert_eq!(
        checker.verify_row(&r, NOW).unwrap_err().refusal().label(),
        "issuer_outside_zone"
    );
    // Speaking for a zone it is not in: the signature holds, and the
    // gossip core, which checks every row's issuer against its zone, refuses it.
    let mut r = row("/eu/paris", "/us/x", vec![]);
    us.sign_row(&mut r);
    assert_eq!(checker.verify_row(&r, NOW), Ok(()));
    let mut core =
        crate::gossip::Agent::new(crate::config::Config::new(p("/eu/paris/h1"), "h1"), NOW);
    core.set_security(Some(checker.clone()));
    let push = crate::message::Message::Push {
        target: p("/eu"),
        rows: vec![Arc::new(r)],
    };
    core.handle_message(NOW, &"h7".into(), push);
    assert_eq!(
        core.stats()
            .rejected
            .get(&crate::refusal::Refusal::RowIssuerOutsideZone),
        Some(&1)
    );
    // A client certificate does not sign rows.
    let c = security(client(&ca, "ops", &["afc:/"]));
    let mut r = row("/us/x", "/us/x", vec![]);
    c.sign_row(&mut r);
    assert_eq!(
        checker.verify_row(&r, NOW).unwrap_err().refusal().label(),
        "untrusted_cert"
    );
}

#[test]
fn afcs_need_an_authority_or_a_client_right_over_their_scope() {
    let ca = root("/");
    let eu = ca
        .new_child(CertKind::Authority, "/eu", NOW, NOW + YEAR)
        .unwrap();
    let checker = security(agent(&ca, "/eu/paris/h1"));
    for (signer, scope) in [
        (&ca, "/"),
        (&eu, "/eu"),
        (&eu, "/eu/paris"),
        (&client(&ca, "ops", &["afc:/eu", "afc:/us"]), "/eu/paris"),
    ] {
        assert_eq!(
            checker.verify_afc(&signed_afc(signer, scope), NOW),
            Ok(()),
            "{scope}"
        );
    }
    let cases = [
        (&eu, "/"),
        (&eu, "/us"),
        (&client(&ca, "ops", &["afc:/eu/paris"]), "/eu"),
        (&agent(&ca, "/eu/paris/h1"), "/eu/paris"),
    ];
    for (signer, scope) in cases {
        let e = checker
            .verify_afc(&signed_afc(signer, scope), NOW)
            .unwrap_err();
        assert_eq!(e.refusal().label(), "afc_not_allowed", "{scope}: {e}");
    }
    // Tampering with the SQL, or the signer name.
    let mut a = signed_afc(&eu, "/eu");
    a.sql = "SELECT MIN(load) AS load".into();
    assert_eq!(
        checker.verify_afc(&a, NOW).unwrap_err().refusal().label(),
        "bad_signature"
    );
    let mut a = signed_afc(&eu, "/eu");
    a.signer = "/".into();
    assert_eq!(
        checker.verify_afc(&a, NOW).unwrap_err().refusal().label(),
        "untrusted_cert"
    );
    let a = AfcCert::new(p("/eu"), "x", "SELECT MAX(load) AS load", NOW);
    assert_eq!(
        checker.verify_afc(&a, NOW).unwrap_err().refusal().label(),
        "unsigned"
    );
    // Tombstones sign the same way.
    let mut t = AfcCert::tombstone(p("/eu"), "load", NOW + 1);
    sign_afc(&eu, &mut t);
    assert_eq!(checker.verify_afc(&t, NOW), Ok(()));
    // An AFC from the future is refused.
    let mut f = AfcCert::new(p("/eu"), "f", "SELECT MAX(load) AS load", NOW + YEAR);
    sign_afc(&eu, &mut f);
    assert_eq!(
        checker.verify_afc(&f, NOW).unwrap_err().refusal().label(),
        "expired_cert"
    );
}

#[test]
fn rows_carry_afcs_that_must_hold() {
    let ca = root("/");
    let h7 = security(agent(&ca, "/eu/paris/h7"));
    let checker = security(agent(&ca, "/eu/paris/h1"));
    let good = Arc::new(signed_afc(&ca, "/eu"));
    let mut r = row("/eu/paris/h7", "/eu/paris/h7", vec![good.clone()]);
    h7.sign_row(&mut r);
    assert_eq!(checker.verify_row(&r, NOW), Ok(()));
    let bytes = postcard::to_allocvec(&r).unwrap();
    assert!(r.encoded_len() >= bytes.len());
    // A carried AFC swapped for an unauthorised one breaks the row signature;
    // signed again by a rogue agent, the AFC itself fails.
    let sneaky = Arc::new(signed_afc(&client(&ca, "c", &["afc:/us"]), "/eu"));
    let mut t = r.clone();
    t.afcs = vec![sneaky.clone()];
    assert_eq!(
        checker.verify_row(&t, NOW).unwrap_err().refusal().label(),
        "bad_signature"
    );
    let mut t = row("/eu/paris/h7", "/eu/paris/h7", vec![sneaky]);
    h7.sign_row(&mut t);
    assert_eq!(
        checker.verify_row(&t, NOW).unwrap_err().refusal().label(),
        "afc_not_allowed"
    );
}

#[test]
fn sub_authority_chains_and_their_zone_rules() {
    let ca = root("/");
    let eu = ca
        .new_child(CertKind::Authority, "/eu", NOW, NOW + YEAR)
        .unwrap();
    let paris = eu
        .new_child(CertKind::Authority, "/eu/paris", NOW, NOW + YEAR)
        .unwrap();
    let h7 = agent(&paris, "/eu/paris/h7");
    assert_eq!(h7.cert.depth(), 3, "the root stays out of the chain");
    let trust = ca.trust().unwrap();
    assert_eq!(trust.verify(&h7.cert, NOW), Ok(()));
    // An authority certifies inside its zone only.
    assert!(matches!(
        eu.new_child(CertKind::Agent, "/us/h1", NOW, NOW + YEAR),
        Err(SecurityError::OutsideZone { .. })
    ));
    assert!(matches!(
        eu.new_child(CertKind::Authority, "/", NOW, NOW + YEAR),
        Err(SecurityError::OutsideZone { .. })
    ));
    let allow = vec![Right::parse("afc:/us").unwrap()];
    assert!(matches!(
        eu.new_child(CertKind::Client { allow }, "c", NOW, NOW + YEAR),
        Err(SecurityError::OutsideZone { .. })
    ));
    // Agents and clients do not sign certificates.
    assert!(matches!(
        h7.new_child(CertKind::Agent, "/eu/paris/h8", NOW, NOW + YEAR),
        Err(SecurityError::NotAnAuthority { .. })
    ));
    // A forged link: /eu re-signs a /us agent by hand, bypassing the checks.
    let key = identity::generate_key();
    let mut forged = Certificate {
        kind: CertKind::Agent,
        subject: "/us/h1".into(),
        key: key.verifying_key().to_bytes(),
        issued: NOW,
        expires: NOW + YEAR,
        signer: eu.cert.key,
        signature: Vec::new(),
        parent: Some(eu.cert.clone()),
    };
    forged.signature = eu.sign(&forged.signing_bytes());
    assert!(matches!(
        trust.verify(&forged, NOW),
        Err(SecurityError::OutsideZone { .. })
    ));
    // A tampered link in the middle of the chain.
    let mut bad_parent = (*paris.cert).clone();
    bad_parent.subject = "/eu".into();
    let mut t = (*h7.cert).clone();
    t.parent = Some(Arc::new(bad_parent));
    assert_eq!(
        Reject::from(trust.verify(&t, NOW).unwrap_err())
            .refusal()
            .label(),
        "bad_signature"
    );
    // A chain that carries the root is accepted, if the root is the anchor.
    let mut with_root = (*eu.cert).clone();
    with_root.parent = Some(ca.cert.clone());
    with_root.signature = ca.sign(&with_root.signing_bytes());
    assert_eq!(trust.verify(&with_root, NOW), Ok(()));
    let mut fake_root = (*ca.cert).clone();
    fake_root.expires += 1;
    with_root.parent = Some(Arc::new(fake_root));
    with_root.signature = ca.sign(&with_root.signing_bytes());
    assert!(matches!(
        trust.verify(&with_root, NOW),
        Err(SecurityError::UntrustedAnchor(_))
    ));
}

#[test]
fn expiry_and_clock_skew() {
    let ca = root("/");
    let h = ca
        .new_child(CertKind::Agent, "/a/h", NOW, NOW + DAY)
        .unwrap();
    let trust = ca.trust().unwrap();
    assert_eq!(trust.verify(&h.cert, NOW + DAY), Ok(()));
    assert_eq!(trust.verify(&h.cert, NOW + DAY + CLOCK_SKEW), Ok(()));
    let e = trust
        .verify(&h.cert, NOW + DAY + CLOCK_SKEW + 1)
        .unwrap_err();
    assert!(matches!(e, SecurityError::Expired { .. }), "{e}");
    assert_eq!(Reject::from(e).refusal().label(), "expired_cert");
    assert!(matches!(
        trust.verify(&h.cert, NOW - CLOCK_SKEW - 1),
        Err(SecurityError::NotYetValid { .. })
    ));
    // A child never outlives its authority.
    let short = ca
        .new_child(CertKind::Authority, "/a", NOW, NOW + DAY)
        .unwrap();
    let long = short
        .new_child(CertKind::Agent, "/a/h", NOW, NOW + YEAR)
        .unwrap();
    assert_eq!(long.cert.expires, NOW + DAY);
    // The anchor's own expiry counts, though the chain leaves it out.
    let old = Identity::new_root(&p("/"), NOW, NOW + DAY);
    let h = old
        .new_child(CertKind::Agent, "/a/h", NOW, NOW + DAY)
        .unwrap();
    let mut c = (*h.cert).clone();
    c.expires = NOW + YEAR;
    c.signature = old.sign(&c.signing_bytes());
    assert!(matches!(
        old.trust().unwrap().verify(&c, NOW + 2 * DAY),
        Err(SecurityError::Expired { .. })
    ));
    // An expired agent's rows are refused.
    let h = security(
        ca.new_child(CertKind::Agent, "/a/h", NOW, NOW + DAY)
            .unwrap(),
    );
    let mut r = row("/a/h", "/a/h", vec![]);
    h.sign_row(&mut r);
    assert_eq!(
        h.verify_row(&r, NOW + 2 * DAY)
            .unwrap_err()
            .refusal()
            .label(),
        "expired_cert"
    );
}

#[test]
fn untrusted_anchors_are_refused() {
    let ca = root("/");
    let other = root("/");
    let h = agent(&other, "/eu/h1");
    let checker = security(agent(&ca, "/eu/h2"));
    let mut r = row("/eu/h1", "/eu/h1", vec![]);
    security(h).sign_row(&mut r);
    assert_eq!(
        checker.verify_row(&r, NOW).unwrap_err().refusal().label(),
        "untrusted_cert"
    );
    let e = ca.trust().unwrap().verify(&other.cert, NOW).unwrap_err();
    assert!(matches!(e, SecurityError::UntrustedAnchor(_)), "{e}");
    assert!(Trust::new([agent(&ca, "/x/y").cert]).is_err());
}

#[test]
fn oversized_and_deep_chains_are_refused_on_decode_and_verify() {
    let ca = root("/");
    let mut auth = ca
        .new_child(CertKind::Authority, "/a", NOW, NOW + YEAR)
        .unwrap();
    let mut zone = "/a".to_string();
    while auth.cert.depth() < MAX_CHAIN {
        zone.push_str("/a");
        auth = auth
            .new_child(CertKind::Authority, &zone, NOW, NOW + YEAR)
            .unwrap();
    }
    let trust = ca.trust().unwrap();
    assert_eq!(trust.verify(&auth.cert, NOW), Ok(()));
    zone.push_str("/h");
    assert!(matches!(
        auth.new_child(CertKind::Agent, &zone, NOW, NOW + YEAR),
        Err(SecurityError::TooDeep(_))
    ));
    // Built by hand, one link too deep: refused by verify, and by decode.
    let mut deep = Certificate {
        kind: CertKind::Agent,
        subject: zone.clone(),
        key: [7; 32],
        issued: NOW,
        expires: NOW + YEAR,
        signer: auth.cert.key,
        signature: Vec::new(),
        parent: Some(auth.cert.clone()),
    };
    deep.signature = auth.sign(&deep.signing_bytes());
    assert!(matches!(
        trust.verify(&deep, NOW),
        Err(SecurityError::TooDeep(_))
    ));
    let bytes = postcard::to_allocvec(&deep).unwrap();
    assert!(postcard::from_bytes::<Certificate>(&bytes).is_err());
    // Too large: a client with many long rights.
    let long_zone = format!("/{}", "z".repeat(60)).repeat(4);
    let allow: Vec<Right> = (0..20)
        .map(|i| Right::parse(&format!("afc:{long_zone}/{i}")).unwrap())
        .collect();
    let mut big = Certificate {
        kind: CertKind::Client { allow },
        subject: "big".into(),
        key: [7; 32],
        issued: NOW,
        expires: NOW + YEAR,
        signer: ca.cert.key,
        signature: Vec::new(),
        parent: None,
    };
    big.signature = ca.sign(&big.signing_bytes());
    assert!(big.encoded_len() > MAX_CERT_BYTES);
    assert!(matches!(
        trust.verify(&big, NOW),
        Err(SecurityError::TooLarge(_))
    ));
    // Such a certificate in a row makes the message invalid, without panic.
    let mut r = row("/a/h", "/a/h", vec![]);
    r.set_signature(Some(Arc::new(big)), vec![0; 64]);
    let msg = crate::message::Message::Ack {
        sender: ZonePath::parse("/a/h").unwrap(),
        rows: vec![Arc::new(r)],
    };
    assert!(crate::message::Message::decode(&msg.encode()).is_err());
}

#[test]
fn verification_is_cached() {
    let ca = root("/");
    let eu = ca
        .new_child(CertKind::Authority, "/eu", NOW, NOW + YEAR)
        .unwrap();
    let h = agent(&eu, "/eu/h1");
    let checker = security(agent(&ca, "/eu/h2"));
    let trust = checker.trust();
    let before = trust.cached();
    assert_eq!(trust.verify(&h.cert, NOW), Ok(()));
    assert_eq!(trust.cached(), before + 1);
    // An equal certificate decoded afresh hits the cache.
    let copy: Certificate =
        postcard::from_bytes(&postcard::to_allocvec(&*h.cert).unwrap()).unwrap();
    assert_eq!(trust.verify(&copy, NOW), Ok(()));
    assert_eq!(trust.cached(), before + 1);
    // Time is checked on every hit.
    assert!(trust.verify(&copy, NOW + 2 * YEAR).is_err());
    // A failing certificate is not remembered.
    let mut bad = copy.clone();
    bad.issued += 1;
    assert!(trust.verify(&bad, NOW).is_err());
    assert_eq!(trust.cached(), before + 1);
    // AFCs too.
    let a = signed_afc(&eu, "/eu");
    assert_eq!(checker.verify_afc(&a, NOW), Ok(()));
    assert_eq!(checker.cached_afcs(), 1);
    assert_eq!(checker.verify_afc(&a.clone(), NOW), Ok(()));
    assert_eq!(checker.cached_afcs(), 1);
    let mut t = a.clone();
    t.sql = "SELECT MIN(load) AS load".into();
    assert!(checker.verify_afc(&t, NOW).is_err());
    assert_eq!(checker.cached_afcs(), 1);
}

#[test]
fn rights_and_names_parse_strictly() {
    assert_eq!(Right::parse("afc:/eu").unwrap().to_string(), "afc:/eu");
    assert_eq!(Right::parse("afc:/").unwrap().zone(), &ZonePath::root());
    for bad in ["afc:", "afc:eu", "afc:/eu/", "read:/eu", "/eu", "AFC:/eu"] {
        assert!(
            matches!(Right::parse(bad), Err(SecurityError::BadRight(_))),
            "{bad}"
        );
    }
    assert!(cert::check_client_name("ops-team_1.a").is_ok());
    for bad in ["", "a b", "a/b", &"x".repeat(65)] {
        assert!(cert::check_client_name(bad).is_err(), "{bad}");
    }
    let ca = root("/");
    assert!(matches!(
        ca.new_child(
            CertKind::Client { allow: vec![] },
            "bad name",
            NOW,
            NOW + YEAR
        ),
        Err(SecurityError::BadName(_))
    ));
    assert!(ca.new_child(CertKind::Agent, "/", NOW, NOW + YEAR).is_err());
}

#[test]
fn security_for_agent_checks_the_leaf() {
    let ca = root("/");
    assert!(Security::for_agent(agent(&ca, "/eu/h7"), &p("/eu/h7"), NOW).is_ok());
    assert!(Security::for_agent(agent(&ca, "/eu/h7"), &p("/eu/h8"), NOW).is_err());
    assert!(Security::for_agent(client(&ca, "c", &["afc:/"]), &p("/eu/h7"), NOW).is_err());
}

#[test]
fn cert_encoding_size_estimate_is_an_upper_bound() {
    let ca = root("/");
    let eu = ca
        .new_child(CertKind::Authority, "/eu", NOW, NOW + YEAR)
        .unwrap();
    let c = client(&eu, "ops", &["afc:/eu/paris", "afc:/eu/berlin"]);
    for cert in [&ca.cert, &eu.cert, &c.cert] {
        let bytes = postcard::to_allocvec(&**cert).unwrap();
        assert!(cert.encoded_len() >= bytes.len());
        assert!(cert.encoded_len() <= bytes.len() + 64);
        let back: Certificate = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, **cert);
        let json = serde_json::to_string(&**cert).unwrap();
        let back: Certificate = serde_json::from_str(&json).unwrap();
        assert_eq!(back, **cert);
    }
}
