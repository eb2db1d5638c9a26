//! Client-side encryption of backup artifacts in the age format (X25519 recipients), streamed.
//!
//! A backup needs only [`Recipients`] (public keys, `age1…`): the cluster can write backups it cannot
//! read. Restore, verification and `describe --contents` need [`Identities`] (private keys,
//! `AGE-SECRET-KEY-1…`), read from the storage's `identitySecret` or `--identity-file`.
//!
//! [`put_artifact`] is the one place an artifact is written: its body is encrypted on the way (a
//! bounded pipe between the age writer and the store's streaming upload, nothing collected in memory),
//! and what it reports is what is stored, so the manifest's sha256 is of the ciphertext and can be
//! checked before anything is decrypted. The age format authenticates every 64 KiB chunk and the end of
//! the stream: a modified, reordered or truncated object fails to decrypt instead of yielding altered
//! plaintext.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use age::x25519;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::compat::{
    FuturesAsyncReadCompatExt, FuturesAsyncWriteCompatExt, TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt,
};

use super::{HashingReader, ObjectStore, Written};

/// Bytes buffered between the age writer and the store's upload.
const PIPE_BYTES: usize = 256 * 1024;
/// Bytes read from the body at a time.
const COPY_BYTES: usize = 64 * 1024;

/// Errors of keys and of encryption.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A recipient is not an age X25519 public key.
    #[error("{text:?} is not an age X25519 recipient (age1…): {reason}")]
    Recipient {
        /// What was given.
        text: String,
        /// The parser's reason.
        reason: String,
    },
    /// A line of an identity file or Secret is not an age X25519 identity.
    #[error(
        "line {line} of {origin} is not an age X25519 identity (AGE-SECRET-KEY-1…); lines may also be empty or `#` comments"
    )]
    Identity {
        /// Where the identities came from.
        origin: String,
        /// 1-based line number.
        line: usize,
    },
    /// An identity file or Secret holds no identity.
    #[error("{0} holds no age identity (AGE-SECRET-KEY-1…)")]
    NoIdentities(String),
    /// The backup is encrypted and no identity was given.
    #[error(
        "backup {backup} is encrypted to {recipients}; no identity was given: set the storage's encryption.identitySecret or pass --identity-file"
    )]
    IdentityMissing {
        /// The backup (`policy/id`).
        backup: String,
        /// Its recipients, comma-separated.
        recipients: String,
    },
    /// None of the identities given is one the backup was encrypted to.
    #[error(
        "backup {backup} is encrypted to {recipients}; no matching identity in {origin} (it holds identities for {held}); add the identity of one of those recipients"
    )]
    NoMatch {
        /// The backup (`policy/id`).
        backup: String,
        /// Its recipients, comma-separated.
        recipients: String,
        /// Where the identities came from.
        origin: String,
        /// The public keys of the identities held, comma-separated.
        held: String,
    },
    /// The backup records an encryption scheme this build does not know.
    #[error("backup {backup} is encrypted with {scheme:?}; this freezeframe knows only \"age\"")]
    UnknownScheme {
        /// The backup.
        backup: String,
        /// The recorded scheme.
        scheme: String,
    },
    /// Starting the age encryption failed.
    #[error("cannot start age encryption")]
    Encrypt(#[source] age::EncryptError),
    /// An object could not be decrypted (not age, no matching identity, or altered).
    #[error("cannot decrypt {what}")]
    Decrypt {
        /// The object.
        what: String,
        /// age's reason.
        #[source]
        source: age::DecryptError,
    },
}

/// Public keys new artifacts are encrypted to.
#[derive(Clone, PartialEq, Eq)]
pub struct Recipients(Vec<x25519::Recipient>);

impl Recipients {
    /// Parse `age1…` public keys; at least one.
    pub fn parse<S: AsRef<str>>(keys: &[S]) -> Result<Recipients, Error> {
        let parsed = keys
            .iter()
            .map(|k| {
                let text = k.as_ref().trim();
                x25519::Recipient::from_str(text).map_err(|reason| Error::Recipient {
                    text: text.to_string(),
                    reason: reason.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if parsed.is_empty() {
            return Err(Error::Recipient {
                text: String::new(),
                reason: "no recipient given".into(),
            });
        }
        Ok(Recipients(parsed))
    }

    /// The keys as `age1…` text, in the order given.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.to_strings()).finish()
    }
}

/// Private keys that decrypt artifacts, with where they came from (for messages).
#[derive(Clone)]
pub struct Identities {
    keys: Vec<x25519::Identity>,
    origin: String,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identities")
            .field("origin", &self.origin)
            .field("public", &self.public_keys())
            .finish_non_exhaustive()
    }
}

impl Identities {
    /// Parse an identity file's text (what `age-keygen` writes): one `AGE-SECRET-KEY-1…` per line,
    /// empty lines and `#` comments ignored; at least one. `origin` names the source in messages.
    pub fn parse(text: &str, origin: impl Into<String>) -> Result<Identities, Error> {
        let origin = origin.into();
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(x25519::Identity::from_str(line).map_err(|_| Error::Identity {
                origin: origin.clone(),
                line: n + 1,
            })?);
        }
        if keys.is_empty() {
            return Err(Error::NoIdentities(origin));
        }
        Ok(Identities { keys, origin })
    }

    /// The `age1…` public keys of the identities.
    pub fn public_keys(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.to_public().to_string()).collect()
    }

    /// Where the identities came from (`Secret ns/name key identities`, `file /path`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn as_dyn(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.keys.iter().map(|k| k as &dyn age::Identity)
    }
}

/// How a backup's artifacts are encrypted, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionRecord {
    /// `age`.
    pub scheme: String,
    /// The recipients every encrypted artifact was encrypted to (public keys only).
    pub recipients: Vec<String>,
}

/// The scheme name recorded in manifests.
pub const SCHEME: &str = "age";

/// How new artifacts are written: as they are, or encrypted to recipients.
#[derive(Debug, Clone, Default)]
pub enum Sealing {
    /// Stored as produced.
    #[default]
    Plain,
    /// Encrypted to these recipients.
    Age(Arc<Recipients>),
}

impl Sealing {
    /// How a storage's `encryption:` block (validated) writes artifacts; `None` = as produced.
    pub fn for_storage(encryption: Option<&crate::policy::Encryption>) -> Result<Sealing, Error> {
        Ok(match encryption {
            None => Sealing::Plain,
            Some(e) => Sealing::Age(Arc::new(Recipients::parse(&e.recipients)?)),
        })
    }

    /// What a manifest records for artifacts written this way; `None` = not encrypted.
    pub fn record(&self) -> Option<EncryptionRecord> {
        match self {
            Sealing::Plain => None,
            Sealing::Age(r) => Some(EncryptionRecord {
                scheme: SCHEME.into(),
                recipients: r.to_strings(),
            }),
        }
    }
}

/// How a stored backup's artifacts are read: as stored, or decrypted with identities known to match.
#[derive(Debug, Clone, Default)]
pub enum Opening {
    /// Not encrypted.
    #[default]
    Plain,
    /// Encrypted; these identities include one of its recipients.
    Age(Arc<Identities>),
}

impl Opening {
    /// How to read the backup `backup` whose manifest records `encryption`: checks, before anything is
    /// read or written, that an identity matches one of its recipients.
    pub fn for_backup(
        backup: &str,
        encryption: Option<&EncryptionRecord>,
        identities: Option<&Arc<Identities>>,
    ) -> Result<Opening, Error> {
        let Some(record) = encryption else {
            return Ok(Opening::Plain);
        };
        if record.scheme != SCHEME {
            return Err(Error::UnknownScheme {
                backup: backup.to_string(),
                scheme: record.scheme.clone(),
            });
        }
        let recipients = record.recipients.join(", ");
        let Some(identities) = identities else {
            return Err(Error::IdentityMissing {
                backup: backup.to_string(),
                recipients,
            });
        };
        let held = identities.public_keys();
        if !held.iter().any(|k| record.recipients.contains(k)) {
            return Err(Error::NoMatch {
                backup: backup.to_string(),
                recipients,
                origin: identities.origin.clone(),
                held: held.join(", "),
            });
        }
        Ok(Opening::Age(identities.clone()))
    }

    /// The plaintext of a stored object (`what` names it in errors), decrypted as it is read.
    pub async fn reader<'r, R: AsyncRead + Send + Unpin + 'r>(
        &self,
        what: &str,
        stored: R,
    ) -> Result<Pin<Box<dyn AsyncRead + Send + 'r>>, Error> {
        match self {
            Opening::Plain => Ok(Box::pin(stored)),
            Opening::Age(identities) => {
                let decrypt = |source| Error::Decrypt {
                    what: what.to_string(),
                    source,
                };
                let decryptor = age::Decryptor::new_async(stored.compat())
                    .await
                    .map_err(decrypt)?;
                let plain = decryptor.decrypt_async(identities.as_dyn()).map_err(decrypt)?;
                Ok(Box::pin(plain.compat()))
            }
        }
    }

    /// The plaintext of a stored object read synchronously (for blocking extraction).
    pub fn sync_reader<R: io::Read + Send + 'static>(
        &self,
        what: &str,
        stored: R,
    ) -> Result<Box<dyn io::Read + Send>, Error> {
        match self {
            Opening::Plain => Ok(Box::new(stored)),
            Opening::Age(identities) => {
                let decrypt = |source| Error::Decrypt {
                    what: what.to_string(),
                    source,
                };
                let decryptor = age::Decryptor::new(io::BufReader::new(stored)).map_err(decrypt)?;
                let plain = decryptor.decrypt(identities.as_dyn()).map_err(decrypt)?;
                Ok(Box::new(plain))
            }
        }
    }
}

/// What [`put_artifact`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Size and sha256 of the body as produced (the plaintext).
    pub plain: Written,
    /// Size and sha256 of what the store holds (the ciphertext when encrypted); what manifests record.
    pub stored: Written,
}

/// Stream `body` to `key`, encrypted as `sealing` says. Commits atomically like
/// [`ObjectStore::put`]: an error of the body, the encryption or the upload leaves no object.
pub async fn put_artifact(
    store: &dyn ObjectStore,
    key: &str,
    body: &mut (dyn AsyncRead + Send + Unpin),
    sealing: &Sealing,
) -> super::Result<Stored> {
    let recipients = match sealing {
        Sealing::Plain => {
            let written = store.put(key, body).await?;
            return Ok(Stored {
                plain: written.clone(),
                stored: written,
            });
        }
        Sealing::Age(recipients) => recipients,
    };
    let (writer, mut reader) = super::pipe::pipe(PIPE_BYTES);
    // The reader moves into the upload so a failed upload drops it and fails the next write.
    let upload = async move { store.put(key, &mut reader).await };
    let seal = async {
        let mut plain = HashingReader::new(body);
        let encryptor =
            age::Encryptor::with_recipients(recipients.0.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| Failure::Encrypt(Error::Encrypt(e)))?;
        let mut sealed = encryptor
            .wrap_async_output(writer.compat_write())
            .await
            .map_err(Failure::Write)?
            .compat_write();
        let mut buffer = vec![0; COPY_BYTES];
        loop {
            let n = plain.read(&mut buffer).await.map_err(Failure::Body)?;
            if n == 0 {
                break;
            }
            sealed.write_all(&buffer[..n]).await.map_err(Failure::Write)?;
        }
        // Writes the last (authenticated, final-flagged) chunk and shuts the pipe: complete.
        sealed.shutdown().await.map_err(Failure::Write)?;
        Ok::<_, Failure>(plain.finish())
    };
    let (uploaded, sealed) = tokio::join!(upload, seal);
    match (uploaded, sealed) {
        (Ok(stored), Ok(plain)) => Ok(Stored { plain, stored }),
        (_, Err(Failure::Body(source))) => Err(super::Error::Body {
            key: key.to_string(),
            source,
        }),
        (_, Err(Failure::Encrypt(e))) => Err(super::Error::Other(format!("{key}: {}", error_line(&e)))),
        (Err(e), _) => Err(e),
        (Ok(_), Err(Failure::Write(source))) => Err(super::Error::Body {
            key: key.to_string(),
            source,
        }),
    }
}

enum Failure {
    Body(io::Error),
    Write(io::Error),
    Encrypt(Error),
}

fn error_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        line.push_str(&format!(": {c}"));
        cause = c.source();
    }
    line
}

/// Hook for anything freezeframe must store that is itself a key (e.g. a volume repository's
/// password): encrypted to the recipients, so the backup Job can write it and only an identity reads it.
pub fn seal_secret(recipients: &Recipients, secret: &[u8]) -> Result<Vec<u8>, Error> {
    let encryptor = age::Encryptor::with_recipients(recipients.0.iter().map(|r| r as &dyn age::Recipient))
        .map_err(Error::Encrypt)?;
    let mut out = Vec::new();
    let mut writer = encryptor
        .wrap_output(&mut out)
        .expect("writing to memory cannot fail");
    io::Write::write_all(&mut writer, secret).expect("writing to memory cannot fail");
    writer.finish().expect("writing to memory cannot fail");
    Ok(out)
}

/// The plaintext of [`seal_secret`]'s output.
pub fn open_secret(identities: &Identities, sealed: &[u8]) -> Result<Vec<u8>, Error> {
    let decrypt = |source| Error::Decrypt {
        what: "a sealed secret".into(),
        source,
    };
    let decryptor = age::Decryptor::new(sealed).map_err(decrypt)?;
    let mut reader = decryptor.decrypt(identities.as_dyn()).map_err(decrypt)?;
    let mut out = Vec::new();
    io::Read::read_to_end(&mut reader, &mut out).map_err(|e| Error::Decrypt {
        what: "a sealed secret".into(),
        source: age::DecryptError::Io(e),
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fs::FsStore;
    use crate::store::get_bytes;

    fn keypair() -> (x25519::Identity, String) {
        let identity = x25519::Identity::generate();
        let public = identity.to_public().to_string();
        (identity, public)
    }

    fn identities(keys: &[&x25519::Identity]) -> Arc<Identities> {
        use age::secrecy::ExposeSecret;
        let text: String = keys
            .iter()
            .map(|k| format!("# a comment\n{}\n\n", k.to_string().expose_secret()))
            .collect();
        Arc::new(Identities::parse(&text, "file test.key").unwrap())
    }

    #[tokio::test]
    async fn given_sealed_put_when_opened_with_identity_then_plaintext_back_and_store_holds_ciphertext() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let (identity, public) = keypair();
        let sealing = Sealing::Age(Arc::new(Recipients::parse(&[public]).unwrap()));
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| format!("marker-{i};").into_bytes())
            .collect();

        let stored = put_artifact(&store, "a/obj", &mut &data[..], &sealing)
            .await
            .unwrap();

        let raw = get_bytes(&store, "a/obj").await.unwrap();
        assert_eq!(stored.plain.size, data.len() as u64);
        assert_eq!(stored.stored.size, raw.len() as u64);
        assert!(!raw.windows(9).any(|w| w == b"marker-1;"), "plaintext stored");
        let opening =
            Opening::for_backup("p/1", sealing.record().as_ref(), Some(&identities(&[&identity]))).unwrap();
        let mut plain = opening
            .reader("a/obj", store.get("a/obj").await.unwrap())
            .await
            .unwrap();
        let mut back = Vec::new();
        plain.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
        let sync = opening.sync_reader("a/obj", std::io::Cursor::new(raw)).unwrap();
        assert_eq!(std::io::Read::bytes(sync).count(), data.len());
    }

    #[tokio::test]
    async fn given_one_flipped_byte_when_decrypted_then_error_not_altered_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        let (identity, public) = keypair();
        let sealing = Sealing::Age(Arc::new(Recipients::parse(&[public]).unwrap()));
        let data = vec![42u8; 200_000];
        put_artifact(&store, "obj", &mut &data[..], &sealing)
            .await
            .unwrap();
        let mut raw = get_bytes(&store, "obj").await.unwrap();
        let at = raw.len() - 1000;
        raw[at] ^= 1;

        let opening =
            Opening::for_backup("p/1", sealing.record().as_ref(), Some(&identities(&[&identity]))).unwrap();
        let mut plain = opening.sync_reader("obj", std::io::Cursor::new(raw)).unwrap();
        let mut out = Vec::new();

        assert!(std::io::Read::read_to_end(&mut plain, &mut out).is_err());
    }

    #[test]
    fn given_identities_without_a_recipient_of_the_backup_when_checked_then_error_names_keys_and_source() {
        let (_, public) = keypair();
        let (other, _) = keypair();
        let record = EncryptionRecord {
            scheme: SCHEME.into(),
            recipients: vec![public.clone()],
        };

        let error = Opening::for_backup(
            "shop/20261123T120000Z",
            Some(&record),
            Some(&identities(&[&other])),
        )
        .unwrap_err()
        .to_string();
        let missing = Opening::for_backup("shop/20261123T120000Z", Some(&record), None)
            .unwrap_err()
            .to_string();

        assert!(
            error.contains(&format!("backup shop/20261123T120000Z is encrypted to {public}")),
            "{error}"
        );
        assert!(error.contains("no matching identity in file test.key"), "{error}");
        assert!(missing.contains("--identity-file"), "{missing}");
    }

    #[test]
    fn given_rotated_identities_when_checked_then_any_matching_one_opens_the_backup() {
        let (old, old_public) = keypair();
        let (new, _) = keypair();
        let record = EncryptionRecord {
            scheme: SCHEME.into(),
            recipients: vec![old_public],
        };

        let opening = Opening::for_backup("p/1", Some(&record), Some(&identities(&[&new, &old])));

        assert!(matches!(opening, Ok(Opening::Age(_))));
        assert!(matches!(
            Opening::for_backup("p/1", None, None),
            Ok(Opening::Plain)
        ));
    }

    #[test]
    fn given_malformed_keys_when_parsed_then_errors_say_which() {
        assert!(Recipients::parse(&["age1nope"]).is_err());
        assert!(Recipients::parse::<&str>(&[]).is_err());
        let error = Identities::parse("# x\nAGE-SECRET-KEY-1NOPE\n", "Secret ff/id key identities")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 2 of Secret ff/id key identities"), "{error}");
        assert!(Identities::parse("# only comments\n", "x").is_err());
    }

    #[test]
    fn given_sealed_secret_when_opened_then_it_comes_back() {
        let (identity, public) = keypair();
        let recipients = Recipients::parse(&[public]).unwrap();

        let sealed = seal_secret(&recipients, b"repository password").unwrap();

        assert!(!sealed.windows(8).any(|w| w == b"password"));
        assert_eq!(
            open_secret(&identities(&[&identity]), &sealed).unwrap(),
            b"repository password"
        );
    }
}
