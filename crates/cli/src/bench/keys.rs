//! Keys and values for the benchmark.
//!
//! A key is `--key-prefix` followed by a zero-padded decimal index, padded
//! so that the key is `--key-size` bytes long (longer only when the index
//! needs more digits than that leaves). Readable keys make a benchmark's
//! leftovers easy to inspect with etcdctl, and the fixed width keeps keys
//! of one run in index order, so that a prefix of a key covers a run of
//! neighbouring indices: `--prefix` ranges use that.
//!
//! Random indices come from splitmix64 seeded per client: cheap, and the
//! same run twice touches the same keys.

use clap::Args;
use serde_json::{json, Map, Value};

/// Flags that shape keys and values.
#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Key size in bytes (prefix plus zero-padded index).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Number of distinct keys written or read.
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
    /// Take keys in order (index = operation number modulo --key-space)
    /// instead of at random.
    #[arg(long)]
    pub sequential: bool,
    /// Prefix of every key.
    #[arg(long, default_value = "/bench/")]
    pub key_prefix: String,
}

impl KeyArgs {
    /// The flags as report parameters.
    pub fn params(&self, p: &mut Map<String, Value>) {
        p.insert("key_size".into(), json!(self.key_size));
        p.insert("val_size".into(), json!(self.val_size));
        p.insert("key_space".into(), json!(self.key_space));
        p.insert("sequential".into(), json!(self.sequential));
    }

    /// The key generator these flags describe.
    pub fn keygen(&self) -> KeyGen {
        let space = self.key_space.max(1);
        let digits = (space - 1).max(1).ilog10() as usize + 1;
        KeyGen {
            prefix: self.key_prefix.clone(),
            width: self
                .key_size
                .saturating_sub(self.key_prefix.len())
                .max(digits),
            space,
            sequential: self.sequential,
        }
    }

    /// A value of `--val-size` bytes.
    pub fn value(&self) -> Vec<u8> {
        vec![b'v'; self.val_size]
    }
}

/// Makes the keys of one run.
#[derive(Debug, Clone)]
pub struct KeyGen {
    prefix: String,
    width: usize,
    space: u64,
    sequential: bool,
}

impl KeyGen {
    /// The key with index `i`.
    pub fn key_at(&self, i: u64) -> Vec<u8> {
        format!("{}{:0w$}", self.prefix, i, w = self.width).into_bytes()
    }

    /// The key index for operation `seq`: in order, or drawn from `rng`.
    pub fn index(&self, seq: u64, rng: &mut Rng) -> u64 {
        if self.sequential {
            seq % self.space
        } else {
            rng.below(self.space)
        }
    }

    /// The key for operation `seq`: in order, or drawn from `rng`.
    pub fn key(&self, seq: u64, rng: &mut Rng) -> Vec<u8> {
        self.key_at(self.index(seq, rng))
    }

    /// The prefix shared by the 100 keys whose index differs from `i`'s only
    /// in the last two digits.
    pub fn hundred_prefix(&self, i: u64) -> Vec<u8> {
        let mut k = self.key_at(i);
        k.truncate(k.len() - 2.min(self.width));
        k
    }
}

/// splitmix64: a small, fast, well-mixed generator; not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for client number `client`.
    pub fn for_client(client: usize) -> Self {
        Rng(0x9e37_79b9_7f4a_7c15 ^ (client as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0); the modulo bias is negligible here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(key_size: usize, space: u64) -> KeyArgs {
        KeyArgs {
            key_size,
            val_size: 4,
            key_space: space,
            sequential: true,
            key_prefix: "/b/".into(),
        }
    }

    #[test]
    fn keys_are_padded_to_size_or_to_the_digits_needed() {
        let g = args(10, 1000).keygen();
        assert_eq!(g.key_at(7), b"/b/0000007");
        let g = args(4, 100_000).keygen();
        assert_eq!(g.key_at(7), b"/b/00007");
        let mut rng = Rng::for_client(0);
        assert_eq!(g.key(100_003, &mut rng), b"/b/00003");
    }

    #[test]
    fn hundred_prefix_covers_a_run_of_indices() {
        let g = args(10, 100_000).keygen();
        let p = g.hundred_prefix(12_345);
        assert_eq!(p, b"/b/00123");
        assert!(g.key_at(12_300).starts_with(&p) && g.key_at(12_399).starts_with(&p));
        assert!(!g.key_at(12_400).starts_with(&p));
    }

    #[test]
    fn random_indices_stay_in_range_and_differ_per_client() {
        let (mut a, mut b) = (Rng::for_client(1), Rng::for_client(2));
        let xs: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
        assert!(xs.iter().all(|&x| x < 10));
        assert_ne!(a.next_u64(), b.next_u64());
    }
}
