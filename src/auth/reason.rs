//! Why a request was refused: one closed set, each with its metric label, its status and
//! the generic text a user is shown (the precise reason stays in the log).

/// Why a request was refused (the metric label and log reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MissingCredential,
    MultipleCredentials,
    Malformed,
    TooLarge,
    UnknownIssuer,
    UnknownKey,
    BadSignature,
    BadAlgorithm,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongAudience,
    WrongIssuer,
    MissingClaim,
    MfaRequired,
    AuthTooOld,
    NoUsername,
    KeysUnavailable,
    NotOwner,
    GrantsUnavailable,
    NotInGroup,
    OriginMismatch,
    BadSession,
    BadPath,
    /// A login whose session cookie would be too large for browsers (too many used groups).
    SessionTooLarge,
    Revoked,
}

impl Reason {
    pub const ALL: [Reason; 26] = [
        Reason::MissingCredential,
        Reason::MultipleCredentials,
        Reason::Malformed,
        Reason::TooLarge,
        Reason::UnknownIssuer,
        Reason::UnknownKey,
        Reason::BadSignature,
        Reason::BadAlgorithm,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::WrongAudience,
        Reason::WrongIssuer,
        Reason::MissingClaim,
        Reason::MfaRequired,
        Reason::AuthTooOld,
        Reason::NoUsername,
        Reason::KeysUnavailable,
        Reason::NotOwner,
        Reason::GrantsUnavailable,
        Reason::NotInGroup,
        Reason::OriginMismatch,
        Reason::BadSession,
        Reason::BadPath,
        Reason::SessionTooLarge,
        Reason::Revoked,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::MissingCredential => "missing_credential",
            Reason::MultipleCredentials => "multiple_credentials",
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::BadAlgorithm => "bad_algorithm",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::WrongAudience => "wrong_audience",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::MissingClaim => "missing_claim",
            Reason::MfaRequired => "mfa_required",
            Reason::AuthTooOld => "auth_too_old",
            Reason::NoUsername => "no_username",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::NotOwner => "not_owner",
            Reason::GrantsUnavailable => "grants_unavailable",
            Reason::NotInGroup => "not_in_group",
            Reason::OriginMismatch => "origin_mismatch",
            Reason::BadSession => "bad_session",
            Reason::BadPath => "bad_path",
            Reason::SessionTooLarge => "session_too_large",
            Reason::Revoked => "revoked",
        }
    }

    /// The HTTP status a denial for this reason gets.
    pub fn status(self) -> u16 {
        match self {
            Reason::MultipleCredentials | Reason::BadPath => 400,
            Reason::KeysUnavailable | Reason::GrantsUnavailable => 503,
            Reason::MfaRequired
            | Reason::AuthTooOld
            | Reason::NoUsername
            | Reason::NotOwner
            | Reason::NotInGroup
            | Reason::OriginMismatch
            | Reason::SessionTooLarge => 403,
            _ => 401,
        }
    }

    /// What the user is told (generic: the precise reason stays in the log).
    pub fn message(self) -> &'static str {
        match self {
            Reason::NotOwner => "This server belongs to another user. If its owner has just shared it with you, try again in a minute; otherwise ask them to share it with you from the hub.",
            Reason::GrantsUnavailable => "This server belongs to another user, and whether it is shared with you cannot be checked right now. Please try again in a few minutes; if it keeps failing, tell the hub's administrators.",
            Reason::MfaRequired | Reason::AuthTooOld => {
                "Multi-factor authentication is required. Please log in again with your second factor."
            }
            Reason::NoUsername | Reason::NotInGroup => "Your account is not active for this service.",
            Reason::OriginMismatch => "Cross-site request refused.",
            Reason::MultipleCredentials => "More than one credential was sent; send exactly one.",
            Reason::KeysUnavailable => "The login service is not available right now. Please try again in a minute.",
            Reason::BadPath => "This address is not valid.",
            Reason::SessionTooLarge => "Your account is a member of more of this service's groups than a login session can hold. Please contact the service's support: the administrators' log names the cause.",
            // Every 401 says the same: expired and forged credentials are not told apart.
            _ => "Please log in: your login is missing or has expired.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_have_statuses_and_labels() {
        for r in Reason::ALL {
            assert!(matches!(r.status(), 400 | 401 | 403 | 503));
            assert!(!r.label().is_empty());
            assert!(!r.message().is_empty());
        }
        let mut labels: Vec<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
