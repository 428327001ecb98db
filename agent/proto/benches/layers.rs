//! What each DDS layer costs per 1 KB message: an origin's stack and a
//! member's, joined directly (every frame handed over at once, both ways,
//! timers fired as time passes), one message through both per iteration.
//!
//! A layer that needs `nak` below it is measured as `X:nak` and its cost
//! given as the difference from `nak` alone. The cryptographic layers are
//! compared with the raw crate calls they make: XChaCha20-Poly1305 seal
//! and open, ed25519 sign and verify (strict), of the same 1 KB. After
//! criterion, a table of medians per message.

use armillary_proto::dds::{OriginId, Params, PinnedKeys, Spec, Stack, StackConfig};
use armillary_proto::row::Micros;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use criterion::{Criterion, black_box};
use ed25519_dalek::{Signer, SigningKey};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZE: usize = 1024;
const CHANNEL: u64 = 0xbe4c;
/// Simulated time between messages.
const STEP: Micros = 20;

fn addr(i: usize) -> Arc<str> {
    format!("10.0.0.{i}:7000").into()
}

fn key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[i as u8 + 1; 32])
}

fn config(i: usize) -> StackConfig {
    let mut c = StackConfig::new(
        CHANNEL,
        OriginId {
            addr: addr(i),
            inc: 1,
        },
        addr(0),
    );
    c.rng_seed = 11 + i as u64;
    c.signer = Some(Arc::new(key(i)));
    c.keys = Some(Arc::new(PinnedKeys(
        (0..2).map(|i| (addr(i), key(i).verifying_key())).collect(),
    )));
    c.params = Params::default();
    c
}

/// An origin (agent 0, also the coordinator) and one member.
struct Pair {
    stacks: [Stack; 2],
    now: Micros,
    delivered: u64,
}

impl Pair {
    fn new(spec: &str) -> Pair {
        let spec = Spec::parse(spec).expect("a valid stack");
        let mut p = Pair {
            stacks: [
                Stack::build(&spec, &config(0)),
                Stack::build(&spec, &config(1)),
            ],
            now: 1_000,
            delivered: 0,
        };
        // Timers armed, keys fetched, streams synced.
        for _ in 0..200 {
            p.tick(100_000);
        }
        p.send(vec![0; SIZE]);
        p
    }

    fn tick(&mut self, dt: Micros) {
        self.now += dt;
        for s in &mut self.stacks {
            if s.poll_timeout() <= self.now {
                s.handle_timeout(self.now);
            }
        }
        self.exchange();
    }

    /// Hands every frame to the other stack until none is left.
    fn exchange(&mut self) {
        loop {
            let mut moved = false;
            for from in 0..2 {
                while let Some(f) = self.stacks[from].poll_frame() {
                    moved = true;
                    let cast = matches!(f.dest, armillary_proto::dds::Dest::All);
                    let now = self.now;
                    self.stacks[1 - from].receive(now, addr(from), f.origin, cast, &f.bytes);
                }
            }
            for s in &mut self.stacks {
                while let Some(d) = s.poll_delivery() {
                    self.delivered += d.data.len() as u64;
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn send(&mut self, data: Vec<u8>) {
        self.now += STEP;
        if self.stacks[0].send(self.now, data).is_err() {
            // Held back: time passes (acknowledgements come) until taken.
            self.tick(10_000);
            return;
        }
        self.exchange();
        if self.stacks.iter().any(|s| s.poll_timeout() <= self.now) {
            self.tick(0);
        }
    }
}

/// The stacks measured, and what each is compared with.
const STACKS: [(&str, &str, Option<&str>); 8] = [
    ("nak", "nak", None),
    ("frag", "frag", None),
    ("fifo", "fifo:nak", Some("nak")),
    ("total", "total:nak", Some("nak")),
    ("flow", "flow:nak", Some("nak")),
    ("gossip", "nak:gossip", Some("nak")),
    ("sign", "sign", None),
    ("encrypt", "encrypt", None),
];

fn median_ns(f: &mut dyn FnMut()) -> f64 {
    // Warm, then 21 samples of 2,000 messages.
    for _ in 0..2_000 {
        f();
    }
    let mut samples: Vec<f64> = (0..21)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..2_000 {
                f();
            }
            t.elapsed().as_nanos() as f64 / 2_000.0
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn raw_seal_open() -> impl FnMut() {
    let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
    let data = vec![0u8; SIZE];
    let mut n = 0u64;
    move || {
        n += 1;
        let mut nonce = [0u8; 24];
        nonce[..8].copy_from_slice(&n.to_le_bytes());
        let nonce = XNonce::from(nonce);
        let ct = cipher.encrypt(&nonce, &data[..]).expect("seals");
        black_box(cipher.decrypt(&nonce, &ct[..]).expect("opens"));
    }
}

fn raw_sign_verify() -> impl FnMut() {
    let k = key(0);
    let v = k.verifying_key();
    let data = vec![0u8; SIZE];
    move || {
        let sig = k.sign(&data);
        assert!(v.verify_strict(black_box(&data), &sig).is_ok());
    }
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (name, spec, _) in STACKS {
        let mut p = Pair::new(spec);
        c.bench_function(&format!("dds/{name}"), |b| b.iter(|| p.send(vec![0; SIZE])));
        assert!(p.delivered > 0, "{spec} delivered nothing");
    }
    let mut seal = raw_seal_open();
    c.bench_function("raw/xchacha20poly1305_seal_open", |b| b.iter(&mut seal));
    let mut sig = raw_sign_verify();
    c.bench_function("raw/ed25519_sign_verify", |b| b.iter(&mut sig));
    c.final_summary();

    println!();
    println!("median per 1 KB message, origin and member together:");
    let mut medians = std::collections::BTreeMap::new();
    for (name, spec, _) in STACKS {
        let mut p = Pair::new(spec);
        let m = median_ns(&mut || p.send(vec![0; SIZE]));
        assert!(p.delivered > 0, "{spec} delivered nothing");
        medians.insert(name, m);
    }
    let seal = median_ns(&mut raw_seal_open());
    let sig = median_ns(&mut raw_sign_verify());
    for (name, spec, base) in STACKS {
        let m = medians[name];
        let alone = base.map_or(m, |b| m - medians[b]);
        let raw = match name {
            "encrypt" => format!("  raw seal+open {seal:.0} ns, ratio {:.2}", m / seal),
            "sign" => format!("  raw sign+verify {sig:.0} ns, ratio {:.2}", m / sig),
            _ => String::new(),
        };
        println!("  {name:<8} {spec:<12} {m:>8.0} ns   layer alone {alone:>7.0} ns{raw}");
    }
}
