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
//!
//! A member of a group is a member of the groups it is in, as directories nest them:
//! Active Directory (its root DSE lists capability [`AD_CAPABILITY`]) is asked with its
//! in-chain matching rule; another directory is walked up from the user, [`MAX_NESTING`]
//! levels and [`MAX_GROUPS`] groups at most, through `member` and `uniqueMember` (groupOfNames,
//! groupOfUniqueNames, AD's group) and a posixGroup's `memberUid` (the user's `uid`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, ldap_escape};

use crate::worker::rules::matcher::any_matches;
use crate::worker::rules::{LdapSettings, MattermostSettings};
use crate::worker::sinks::SinkError;

/// How long one directory lookup may take.
const LDAP_TIMEOUT: Duration = Duration::from_secs(10);
/// The capability Active Directory lists in its root DSE (`LDAP_CAP_ACTIVE_DIRECTORY_OID`).
const AD_CAPABILITY: &str = "1.2.840.113556.1.4.800";
/// Active Directory's matching rule that follows nested groups (`LDAP_MATCHING_RULE_IN_CHAIN`).
const IN_CHAIN: &str = "1.2.840.113556.1.4.1941";
/// Levels of groups within groups walked up (elsewhere than Active Directory).
pub const MAX_NESTING: usize = 8;
/// Groups a walk reads at most.
pub const MAX_GROUPS: usize = 1000;

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
                vec!["uid"],
            )
            .await?
            .success()?;
        let Some(entry) = entries.into_iter().next() else {
            return Ok(Verdict::Refused("not in the directory".into()));
        };
        let entry = SearchEntry::construct(entry);
        let user = Member {
            uid: entry.attrs.get("uid").and_then(|v| v.first()).cloned(),
            dn: entry.dn,
            active_directory: is_active_directory(&mut client).await?,
        };
        if let Some(group) = &ldap.block_group {
            if is_member(&mut client, &ldap.base, group, &user).await? {
                return Ok(Verdict::Refused(format!("a member of {group}")));
            }
        }
        Ok(match ldap.app_groups.get(app) {
            Some(_) if listed => Verdict::Allowed,
            Some(group) if is_member(&mut client, &ldap.base, group, &user).await? => {
                Verdict::Allowed
            }
            Some(group) => Verdict::Refused(format!("not a member of {group}")),
            None if open => Verdict::Allowed,
            None => Verdict::Refused("not on the allow list".into()),
        })
    }
    .await;
    let _ = client.unbind().await;
    verdict
}

/// A user as the directory knows them.
struct Member {
    dn: String,
    /// Their `uid`, for posixGroups' `memberUid`.
    uid: Option<String>,
    /// The directory is Active Directory (its in-chain rule follows nested groups).
    active_directory: bool,
}

/// Whether the directory is Active Directory: its root DSE lists [`AD_CAPABILITY`].
async fn is_active_directory(client: &mut ldap3::Ldap) -> Result<bool, ldap3::LdapError> {
    client.with_timeout(LDAP_TIMEOUT);
    let (entries, _) = client
        .search(
            "",
            Scope::Base,
            "(objectClass=*)",
            vec!["supportedCapabilities"],
        )
        .await?
        .success()?;
    Ok(entries.into_iter().any(|e| {
        SearchEntry::construct(e)
            .attrs
            .get("supportedCapabilities")
            .is_some_and(|caps| caps.iter().any(|c| c == AD_CAPABILITY))
    }))
}

/// Whether `user` is a member of `group` (a DN), directly or through groups within it.
/// The group entry is asked first (it may lie outside `base`; it works with and without
/// the memberof overlay); then Active Directory is asked with its in-chain rule, and
/// another directory walked up from the user's groups under `base`.
async fn is_member(
    client: &mut ldap3::Ldap,
    base: &str,
    group: &str,
    user: &Member,
) -> Result<bool, ldap3::LdapError> {
    let holds_user = holds(&[user.dn.as_str()], user.uid.as_deref());
    client.with_timeout(LDAP_TIMEOUT);
    let result = client
        .search(group, Scope::Base, &holds_user, vec!["1.1"])
        .await?;
    // 32 (noSuchObject): the group is not there, so nobody is in it.
    if result.1.rc == 32 {
        return Ok(false);
    }
    if !result.success()?.0.is_empty() {
        return Ok(true);
    }
    if user.active_directory {
        client.with_timeout(LDAP_TIMEOUT);
        let filter = format!("(memberOf:{IN_CHAIN}:={})", ldap_escape(group));
        let (entries, _) = client
            .search(&user.dn, Scope::Base, &filter, vec!["1.1"])
            .await?
            .success()?;
        return Ok(!entries.is_empty());
    }
    // Up from the user: the groups that hold them, the groups that hold those, ...
    let target = normal_dn(group);
    let mut seen = std::collections::HashSet::new();
    let mut filter = holds_user;
    for _ in 0..MAX_NESTING {
        client.with_timeout(LDAP_TIMEOUT);
        let (entries, _) = client
            .search(base, Scope::Subtree, &filter, vec!["1.1"])
            .await?
            .success()?;
        let found: Vec<String> = entries
            .into_iter()
            .map(|e| SearchEntry::construct(e).dn)
            .filter(|dn| seen.insert(normal_dn(dn)))
            .collect();
        if found.iter().any(|dn| normal_dn(dn) == target) {
            return Ok(true);
        }
        if found.is_empty() || seen.len() > MAX_GROUPS {
            if seen.len() > MAX_GROUPS {
                tracing::warn!(
                    user = user.dn,
                    group,
                    "ldap: over {MAX_GROUPS} groups walked; taken as not a member"
                );
            }
            return Ok(false);
        }
        let dns: Vec<&str> = found.iter().map(String::as_str).collect();
        filter = holds(&dns, None);
    }
    Ok(false)
}

/// A filter for the entries that hold any of `dns` as a member, or `uid` as a
/// posixGroup's `memberUid`.
fn holds(dns: &[&str], uid: Option<&str>) -> String {
    let mut filter = String::from("(|");
    for dn in dns {
        let dn = ldap_escape(*dn);
        filter += &format!("(member={dn})(uniqueMember={dn})");
    }
    if let Some(uid) = uid {
        filter += &format!("(memberUid={})", ldap_escape(uid));
    }
    filter + ")"
}

/// A DN compared as directories compare them, near enough: case and the spaces after
/// commas do not count.
fn normal_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.trim().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_dns_as_directories_read_them() {
        assert_eq!(
            holds(&["cn=a(1),dc=x"], Some("bob")),
            "(|(member=cn=a\\281\\29,dc=x)(uniqueMember=cn=a\\281\\29,dc=x)(memberUid=bob))"
        );
        assert_eq!(
            normal_dn("CN=Ops, OU=Groups,DC=Example"),
            "cn=ops,ou=groups,dc=example"
        );
    }
}
