//! Randomness, supplied one way: services get a [`RandomFill`] when they are built; a protocol
//! machine that wants an RNG gets [`rng`] over it. Tests hand in a seeded one.

use rand_core::{CryptoRng, RngCore};
use std::sync::Arc;

/// Fills buffers with cryptographically secure random bytes.
pub type RandomFill = Arc<dyn Fn(&mut [u8]) + Send + Sync>;

/// The operating system's generator.
pub fn os_random() -> RandomFill {
    Arc::new(|buf: &mut [u8]| rand_core::OsRng.fill_bytes(buf))
}

/// An RNG (for the protocol machines) drawing from `random`.
pub fn rng(random: &RandomFill) -> Rng<'_> {
    Rng(random)
}

/// See [`rng`].
pub struct Rng<'a>(&'a RandomFill);

impl RngCore for Rng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        (self.0)(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        (self.0)(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        (self.0)(dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        (self.0)(dest);
        Ok(())
    }
}

/// [`RandomFill`] is cryptographically secure by contract.
impl CryptoRng for Rng<'_> {}
