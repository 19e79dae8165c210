//! Who may receive an application's messages: the `allow` and `block` lists, and the LDAP
//! directory's groups (`app_groups`, `block_group`), answers cached for `cache`.
//!
//! In order:
//! 1. a `block` pattern matches: refused;
//! 2. with a directory: an address it does not know is refused (it is the authority on
//!    who works here), a member of `block_group` is refused, and when the application has
//!    a group in `app_groups`, its members and the addresses on the `allow` list may
//!    receive, nobody else;
//! 3. otherwise the `allow` list decides: empty, everyone may receive; else only the
//!    addresses on it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, ldap_escape};

use crate::worker::rules::matcher::any_matches;
use crate::worker::rules::{LdapSettings, MattermostSettings};
use crate::worker::sinks::SinkError;

/// How long one directory lookup may take.
const LDAP_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a recipient may receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Not allowed, and why (logged and named in the message's reason).
    Refused(String),
}

/// Decides who may receive, with a cache of the directory's answers.
#[derive(Debug, Default)]
pub struct Access {
    /// (address, application) → (verdict, when it was asked).
    cache: Mutex<HashMap<(String, String), (Verdict, Instant)>>,
}

impl Access {
    /// Whether `address` may receive the messages of `app`; an error when the directory
    /// cannot be asked: for now (down, a timeout), or for good (it refuses the service
    /// account's password, or `base` does not exist).
    pub async fn check(
        &self,
        settings: &MattermostSettings,
        app: &str,
        address: &str,
    ) -> Result<Verdict, SinkError> {
        let address = address.to_ascii_lowercase();
        if any_matches(&settings.block, [address.as_str()]) {
            return Ok(Verdict::Refused("on the block list".into()));
        }
        let listed = any_matches(&settings.allow, [address.as_str()]);
        let Some(ldap) = &settings.ldap else {
            return Ok(if settings.allow.is_empty() || listed {
                Verdict::Allowed
            } else {
                Verdict::Refused("not on the allow list".into())
            });
        };
        let key = (address.clone(), app.to_string());
        if let Some((verdict, at)) = self.cache.lock().expect("cache").get(&key) {
            if at.elapsed() < ldap.cache {
                return Ok(verdict.clone());
            }
        }
        let open = listed || settings.allow.is_empty();
        let verdict = ask_directory(ldap, app, &address, listed, open)
            .await
            .map_err(|e| {
                let why = format!("ldap {}: {e}", ldap.url);
                match &e {
                    // 49: invalid credentials; 32: no such object (the base); 50: not
                    // allowed to search (an anonymous client, a service account without
                    // rights): waiting will not change them.
                    ldap3::LdapError::LdapResult { result }
                        if [32, 49, 50].contains(&result.rc) =>
                    {
                        SinkError::Permanent(why)
                    }
                    _ => SinkError::Transient(why),
                }
            })?;
        self.cache
            .lock()
            .expect("cache")
            .insert(key, (verdict.clone(), Instant::now()));
        Ok(verdict)
    }
}

/// The directory's verdict on `address` for `app`; `listed`: on the `allow` list; `open`:
/// the lists alone let the recipient in (on it, or no list).
async fn ask_directory(
    ldap: &LdapSettings,
    app: &str,
    address: &str,
    listed: bool,
    open: bool,
) -> Result<Verdict, ldap3::LdapError> {
    let settings = LdapConnSettings::new()
        .set_conn_timeout(LDAP_TIMEOUT)
        .set_starttls(ldap.starttls);
    let (connection, mut client) = LdapConnAsync::with_settings(settings, &ldap.url).await?;
    ldap3::drive!(connection);
    client.with_timeout(LDAP_TIMEOUT);
    if let Some((dn, password)) = &ldap.bind {
        client.simple_bind(dn, password.expose()).await?.success()?;
    }
    let verdict = async {
        client.with_timeout(LDAP_TIMEOUT);
        let (entries, _) = client
            .search(
                &ldap.base,
                Scope::Subtree,
                &format!("(mail={})", ldap_escape(address)),
                vec!["1.1"],
            )
            .await?
            .success()?;
        let Some(entry) = entries.into_iter().next() else {
            return Ok(Verdict::Refused("not in the directory".into()));
        };
        let user = SearchEntry::construct(entry).dn;
        if let Some(group) = &ldap.block_group {
            if is_member(&mut client, group, &user).await? {
                return Ok(Verdict::Refused(format!("a member of {group}")));
            }
        }
        Ok(match ldap.app_groups.get(app) {
            Some(_) if listed => Verdict::Allowed,
            Some(group) if is_member(&mut client, group, &user).await? => Verdict::Allowed,
            Some(group) => Verdict::Refused(format!("not a member of {group}")),
            None if open => Verdict::Allowed,
            None => Verdict::Refused("not on the allow list".into()),
        })
    }
    .await;
    let _ = client.unbind().await;
    verdict
}

/// Whether `user` (a DN) is a member of `group` (a DN): the group entry is asked for the
/// member, which works with and without the memberof overlay.
async fn is_member(
    client: &mut ldap3::Ldap,
    group: &str,
    user: &str,
) -> Result<bool, ldap3::LdapError> {
    let user = ldap_escape(user);
    client.with_timeout(LDAP_TIMEOUT);
    let result = client
        .search(
            group,
            Scope::Base,
            &format!("(|(member={user})(uniqueMember={user}))"),
            vec!["1.1"],
        )
        .await?;
    // 32 (noSuchObject): the group is not there, so nobody is in it.
    if result.1.rc == 32 {
        return Ok(false);
    }
    let (entries, _) = result.success()?;
    Ok(!entries.is_empty())
}
