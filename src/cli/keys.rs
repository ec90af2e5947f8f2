//! `unbind-gateway keys`: make keys for the keyring, and show what a config's keyring holds.
//!
//! `keys new` prints `[[key]]` entries (32 random bytes each) to append to a keys file or to
//! write one per file into a keys directory; `keys list` shows, without secrets, the keys a
//! replica with this config would load and which one per purpose is active;
//! `keys number-hash-from-secret` prints the number-hash key a legacy `signing_secret` derives,
//! so a deployment that began with one can drop it without changing its store's index.

use std::path::PathBuf;

use anyhow::{Context, bail};

use crate::{
    config::Config,
    security::{KeyPurpose, new_key_entry, signing_secret_number_key_entry, valid_key_id},
};

/// What `keys` does.
#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Print new random keys as keys-file entries (inactive unless --active).
    New {
        /// The new keys' id (1 to 32 of A-Z a-z 0-9 . _ -), e.g. the month they start.
        #[arg(long)]
        id: String,
        /// Which purposes: session, account-ref, stored-data, number-hash, code; or all. The
        /// number hash keeps one key for the life of the data: `all` leaves it out unless
        /// named.
        #[arg(long, value_delimiter = ',', default_value = "all")]
        purpose: Vec<String>,
        /// Mark the keys active (for a new deployment; when rotating, add them inactive to
        /// every replica first).
        #[arg(long)]
        active: bool,
    },
    /// List the keys this config's keyring holds (ids and purposes, never secrets).
    List {
        /// The gateway's config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the number-hash key the config's legacy `signing_secret` derives, as a keys-file
    /// entry, so the keyring can keep the store's index without the secret.
    NumberHashFromSecret {
        /// The gateway's config file.
        #[arg(long, short)]
        config: PathBuf,
        /// The id to give the key.
        #[arg(long, default_value = "index-1")]
        id: String,
    },
}

/// Runs `keys`; what it prints goes to standard output.
pub fn run(command: KeysCommand) -> anyhow::Result<()> {
    print!("{}", output(command)?);
    Ok(())
}

fn output(command: KeysCommand) -> anyhow::Result<String> {
    match command {
        KeysCommand::New {
            id,
            purpose,
            active,
        } => {
            check_id(&id)?;
            let mut purposes = Vec::new();
            for name in &purpose {
                match name.as_str() {
                    "all" => purposes.extend(
                        KeyPurpose::ALL
                            .into_iter()
                            .filter(|p| *p != KeyPurpose::NumberHash),
                    ),
                    other => purposes.push(KeyPurpose::parse(other).with_context(|| {
                        format!(
                            "--purpose: {other:?} is not one of all, {}",
                            KeyPurpose::ALL.map(KeyPurpose::name).join(", ")
                        )
                    })?),
                }
            }
            purposes.sort();
            purposes.dedup();
            Ok(purposes
                .into_iter()
                .map(|p| new_key_entry(&id, p, active))
                .collect::<Vec<_>>()
                .join("\n"))
        }
        KeysCommand::List { config } => {
            let config = Config::load(&config)?;
            let keys = config.keyring()?;
            let mut out = String::from("PURPOSE      KEY ID                           STATE\n");
            for key in keys.list() {
                out.push_str(&format!(
                    "{:<12} {:<32} {}\n",
                    key.purpose.name(),
                    key.id,
                    if key.active { "active" } else { "opens only" }
                ));
            }
            if keys.opens_legacy_values() {
                out.push_str("(the signing secret also opens values sealed before the keyring)\n");
            }
            Ok(out)
        }
        KeysCommand::NumberHashFromSecret { config, id } => {
            check_id(&id)?;
            let config = Config::load(&config)?;
            let Some(secret) = config.signing_secret()? else {
                bail!("this config has no `signing_secret`: its number-hash key is in the keyring");
            };
            Ok(signing_secret_number_key_entry(&secret, &id))
        }
    }
}

fn check_id(id: &str) -> anyhow::Result<()> {
    if !valid_key_id(id) || id == crate::security::SIGNING_SECRET_ID {
        bail!("--id: 1 to 32 of A-Z a-z 0-9 . _ - (and not \"signing-secret\")");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{KeySources, Keys};

    #[test]
    fn new_keys_load_as_a_keyring_and_all_leaves_out_the_number_hash() {
        let text = output(KeysCommand::New {
            id: "2026-12".into(),
            purpose: vec!["all".into()],
            active: true,
        })
        .unwrap();
        assert_eq!(text.matches("[[key]]").count(), 4);
        assert!(!text.contains("number-hash"));
        let index = output(KeysCommand::New {
            id: "index".into(),
            purpose: vec!["number-hash".into()],
            active: true,
        })
        .unwrap();
        let keys = Keys::load(&KeySources {
            files: vec![("new".into(), format!("{text}\n{index}"))],
            signing_secret: None,
        })
        .unwrap();
        assert_eq!(keys.list().len(), 5);
        assert!(keys.list().iter().all(|k| k.active));
        for bad in [("bad id", "all"), ("ok", "sessions")] {
            let e = output(KeysCommand::New {
                id: bad.0.into(),
                purpose: vec![bad.1.into()],
                active: false,
            })
            .unwrap_err()
            .to_string();
            assert!(e.contains("--id") || e.contains("--purpose"), "{e}");
        }
    }
}
