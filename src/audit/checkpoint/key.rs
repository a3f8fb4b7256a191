//! Checkpoint MACs: the key (`audit.checkpoint_key`, never printed), sealing a checkpoint,
//! and checking one against the configured keys and the pinned unkeyed checkpoint.

use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::{Digest, Sha256};

use super::Checkpoint;
use crate::config::{AuditConfig, ConfigError, UnkeyedPin};

type HmacSha256 = hmac::Hmac<Sha256>;

/// `alg` of a checkpoint MACed with `audit.checkpoint_key`.
pub const KEYED: &str = "hmac-sha256";
/// `alg` of a checkpoint written without a key: a plain digest anyone can recompute.
pub const UNKEYED: &str = "sha256";
/// Shortest accepted key; HMAC-SHA256 gains nothing from more than 64 bytes.
const MIN_KEY_LEN: usize = 32;
/// Separates checkpoint MACs from any other use of the same key.
const DOMAIN: &str = "sever-audit-checkpoint-v1";

impl Checkpoint {
    /// The canonical text the MAC covers: a JSON array of the fields in a fixed order.
    pub(super) fn message(&self) -> String {
        serde_json::to_string(&(
            DOMAIN,
            self.index,
            &self.at,
            self.head_seq,
            &self.head_hash,
            &self.prev_mac,
            &self.alg,
        ))
        .expect("a tuple of strings and integers always serialises")
    }

    /// Sets `alg` and `mac`: keyed when there is a key.
    pub(super) fn seal(&mut self, key: Option<&CheckpointKey>) {
        self.alg = if key.is_some() { KEYED } else { UNKEYED }.to_owned();
        self.mac = match key {
            Some(key) => hex::encode(key.mac(&self.message()).finalize().into_bytes()),
            None => hex::encode(Sha256::digest(self.message().as_bytes())),
        };
    }

    /// Checks `mac` against any of `keys`; `Err` says why it does not check out.
    pub(super) fn check(&self, keys: &[CheckpointKey]) -> Result<(), String> {
        match self.alg.as_str() {
            KEYED if keys.is_empty() => {
                Err("it is keyed, but no audit.checkpoint_key is configured".into())
            }
            KEYED => {
                let presented = hex::decode(&self.mac).map_err(|_| "its MAC is not hex")?;
                let message = self.message();
                // `verify_slice` compares in constant time.
                if keys
                    .iter()
                    .any(|key| key.mac(&message).verify_slice(&presented).is_ok())
                {
                    Ok(())
                } else {
                    Err(
                        "its MAC does not verify: it was forged or altered, or made with a key \
                         that is not configured"
                            .into(),
                    )
                }
            }
            UNKEYED => {
                if hex::encode(Sha256::digest(self.message().as_bytes())) == self.mac {
                    Ok(())
                } else {
                    Err("its digest does not match its content: it was altered".into())
                }
            }
            other => Err(format!(
                "unknown alg {:?}",
                other.chars().take(16).collect::<String>()
            )),
        }
    }
}

impl Checkpoint {
    /// Whether sever wrote it, as far as the configured `keys` and `pin` can tell: its MAC
    /// (or digest) checks out and, when there is a key, it is keyed or no later than the
    /// pinned unkeyed checkpoint (and is that checkpoint, at its index). Keyed checkpoints
    /// with no key to check them fail here; `audit verify` counts those apart.
    pub(super) fn trusted(
        &self,
        keys: &[CheckpointKey],
        pin: Option<&UnkeyedPin>,
    ) -> Result<(), String> {
        self.check(keys)?;
        if keys.is_empty() || self.alg == KEYED {
            return Ok(());
        }
        match pin {
            None => Err(
                "it is unkeyed, and audit.checkpoint_key is configured with no \
                 audit.unkeyed_checkpoints_through to accept unkeyed checkpoints from before \
                 the key: anyone who can write the store can make one"
                    .into(),
            ),
            Some(pin) if self.index > pin.index => Err(format!(
                "it is unkeyed but comes after checkpoint {} \
                 (audit.unkeyed_checkpoints_through), the last from before the key: it was not \
                 written by sever",
                pin.index
            )),
            Some(pin) if self.index == pin.index && self.mac != pin.mac => Err(
                "it is not the checkpoint pinned by audit.unkeyed_checkpoints_through: the \
                 checkpoints from before the key were rewritten"
                    .into(),
            ),
            Some(_) => Ok(()),
        }
    }
}

/// The checkpoint MAC key (`audit.checkpoint_key`); never printed.
#[derive(Clone)]
pub struct CheckpointKey(SecretSlice<u8>);

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointKey(<redacted>)")
    }
}

impl CheckpointKey {
    /// Loads `audit.checkpoint_key`, if configured.
    pub fn load(config: &AuditConfig) -> Result<Option<Self>, ConfigError> {
        const WHAT: &str = "audit.checkpoint_key";
        let Some(source) = &config.checkpoint_key else {
            return Ok(None);
        };
        Self::new(source.load(WHAT)?)
            .map(Some)
            .ok_or(ConfigError::Secret {
                what: WHAT.to_owned(),
                source_name: source.describe(),
                reason: format!("shorter than {MIN_KEY_LEN} bytes (try `openssl rand -hex 32`)"),
            })
    }

    /// The current key, then `audit.checkpoint_previous_keys`: every key verification accepts.
    pub fn load_all(config: &AuditConfig) -> Result<Vec<Self>, ConfigError> {
        let mut keys: Vec<Self> = Self::load(config)?.into_iter().collect();
        for (i, source) in config.checkpoint_previous_keys.iter().enumerate() {
            let what = format!("audit.checkpoint_previous_keys[{i}]");
            let key = Self::new(source.load(&what)?).ok_or_else(|| ConfigError::Secret {
                what,
                source_name: source.describe(),
                reason: format!("shorter than {MIN_KEY_LEN} bytes"),
            })?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// A key from its text; `None` when it is shorter than 32 bytes.
    pub fn new(secret: SecretString) -> Option<Self> {
        let bytes = secret.expose_secret().as_bytes();
        (bytes.len() >= MIN_KEY_LEN).then(|| Self(SecretSlice::from(bytes.to_vec())))
    }

    fn mac(&self, message: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(self.0.expose_secret())
            .expect("HMAC accepts keys of any length");
        mac.update(message.as_bytes());
        mac
    }
}
