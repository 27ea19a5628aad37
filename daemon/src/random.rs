//! Random tokens (leases, lock tokens, session tokens, instance names) from the
//! OS CSPRNG.

/// `n` random bytes from the OS CSPRNG as URL-safe base64 without padding.
pub fn random_token(n: usize) -> String {
    use base64::Engine;
    let mut buf = vec![0u8; n];
    if getrandom::fill(&mut buf).is_err() {
        // The OS refused (no entropy source): a thread RNG seeded from it earlier
        // is the best remaining choice, and better than failing the request.
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut buf);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&buf)
}
