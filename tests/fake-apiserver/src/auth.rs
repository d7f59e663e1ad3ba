//! Bearer-token authentication: a static table of tokens, each naming a user and its groups
//! (`--token TOKEN=USER[:GROUP,GROUP...]`, the format of kube-apiserver's static token file
//! apart). Tokens never reach logs, `Debug` output or the audit log.

use std::collections::BTreeMap;
use std::fmt;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// The groups given with the token, then those every such user has: a service account's
    /// `system:serviceaccounts` and `system:serviceaccounts:NS`, and `system:authenticated`.
    pub groups: Vec<String>,
}

impl User {
    pub fn new(name: &str, groups: &[&str]) -> Self {
        let mut all: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        if let Some(rest) = name.strip_prefix("system:serviceaccount:") {
            if let Some((ns, _)) = rest.split_once(':') {
                all.push("system:serviceaccounts".into());
                all.push(format!("system:serviceaccounts:{ns}"));
            }
        }
        all.push("system:authenticated".into());
        Self {
            name: name.to_owned(),
            groups: all,
        }
    }
}

/// Who may call: no table (every request is `system:anonymous`, as the in-process tests that
/// need no authentication use it) or the tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    table: Option<BTreeMap<String, User>>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<&str> = self
            .table
            .iter()
            .flat_map(|t| t.values().map(|u| u.name.as_str()))
            .collect();
        f.debug_struct("Tokens").field("users", &users).finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("token spec for user {user:?}: {reason} (want TOKEN=USER[:GROUP,GROUP...])")]
pub struct TokenSpecError {
    /// The user part, or empty; never the token.
    user: String,
    reason: &'static str,
}

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    Unauthorized,
}

impl Tokens {
    /// Every request is allowed in as `system:anonymous`.
    pub fn none() -> Self {
        Self { table: None }
    }

    /// Requests must carry one of `tokens`.
    pub fn with(tokens: impl IntoIterator<Item = (String, User)>) -> Self {
        Self {
            table: Some(tokens.into_iter().collect()),
        }
    }

    /// Parses `TOKEN=USER[:GROUP,GROUP...]`.
    pub fn parse_spec(spec: &str) -> Result<(String, User), TokenSpecError> {
        let (token, rest) = spec.split_once('=').ok_or(TokenSpecError {
            user: String::new(),
            reason: "no '='",
        })?;
        let (user, groups) = rest.split_once(':').map_or((rest, ""), |(u, g)| (u, g));
        // A service account's name has colons itself: `system:serviceaccount:NS:NAME[:GROUPS]`.
        let (user, groups) = match rest.strip_prefix("system:serviceaccount:") {
            Some(sa) => {
                let mut parts = sa.splitn(3, ':');
                let (ns, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let user = format!("system:serviceaccount:{ns}:{name}");
                (user, parts.next().unwrap_or("").to_owned())
            }
            None => (user.to_owned(), groups.to_owned()),
        };
        let fail = |reason| TokenSpecError {
            user: user.clone(),
            reason,
        };
        if token.is_empty() {
            return Err(fail("empty token"));
        }
        if user.is_empty() || user.ends_with(':') {
            return Err(fail("empty user name"));
        }
        let groups: Vec<&str> = groups.split(',').filter(|g| !g.is_empty()).collect();
        Ok((token.to_owned(), User::new(&user, &groups)))
    }

    /// The user of an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<User, AuthError> {
        let Some(table) = &self.table else {
            return Ok(User {
                name: "system:anonymous".into(),
                groups: vec!["system:unauthenticated".into()],
            });
        };
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(AuthError::Unauthorized)?;
        table.get(token).cloned().ok_or(AuthError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_specs() {
        let (t, u) = Tokens::parse_spec("s3cret=admin:system:masters,ops").expect("spec");
        assert_eq!((t.as_str(), u.name.as_str()), ("s3cret", "admin"));
        assert_eq!(u.groups, ["system:masters", "ops", "system:authenticated"]);
        let (_, sa) =
            Tokens::parse_spec("t=system:serviceaccount:kube-system:wiremesh").expect("sa");
        assert_eq!(sa.name, "system:serviceaccount:kube-system:wiremesh");
        let want = [
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
            "system:authenticated",
        ];
        assert_eq!(sa.groups, want);
        for bad in ["nouser", "=admin", "t=", "t=system:serviceaccount:ns"] {
            let err = Tokens::parse_spec(bad).expect_err(bad).to_string();
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn unknown_and_missing_tokens_are_refused() {
        let tokens = Tokens::with([Tokens::parse_spec("good=alice").expect("spec")]);
        assert_eq!(
            tokens.authenticate(Some("Bearer good")).map(|u| u.name),
            Ok("alice".into())
        );
        assert_eq!(
            tokens.authenticate(Some("Bearer bad")),
            Err(AuthError::Unauthorized)
        );
        assert_eq!(tokens.authenticate(None), Err(AuthError::Unauthorized));
        assert!(!format!("{tokens:?}").contains("good"));
    }
}
