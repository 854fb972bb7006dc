//! The protocol's error codes (reference §9), each with the reason text sent in the error frame.

/// One of the error codes the server may send; strict clients survive only 715 (§0.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 200: unparsable frame, header block or XML.
    Syntax,
    /// 201: unknown account or address, bad id, bad sync state.
    InvalidParameter,
    /// 208: not a thread member or admin.
    Forbidden,
    /// 240: unknown command or target, or not available at this endpoint.
    UnknownCommand,
    /// 500: internal error.
    Internal,
    /// 603: payload too large.
    PayloadTooLarge,
    /// 715: this connection is already bound.
    AlreadyBound,
    /// 803: too many logins or requests in a short time.
    RateLimited,
    /// 911: authentication failed, not authenticated, or bad registration token.
    AuthFailed,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::Syntax,
        ErrorCode::InvalidParameter,
        ErrorCode::Forbidden,
        ErrorCode::UnknownCommand,
        ErrorCode::Internal,
        ErrorCode::PayloadTooLarge,
        ErrorCode::AlreadyBound,
        ErrorCode::RateLimited,
        ErrorCode::AuthFailed,
    ];

    /// The three-digit code as sent on the wire.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::Syntax => 200,
            ErrorCode::InvalidParameter => 201,
            ErrorCode::Forbidden => 208,
            ErrorCode::UnknownCommand => 240,
            ErrorCode::Internal => 500,
            ErrorCode::PayloadTooLarge => 603,
            ErrorCode::AlreadyBound => 715,
            ErrorCode::RateLimited => 803,
            ErrorCode::AuthFailed => 911,
        }
    }

    /// The default human-readable reason.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorCode::Syntax => "Syntax error",
            ErrorCode::InvalidParameter => "Invalid parameter",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::UnknownCommand => "Unknown command",
            ErrorCode::Internal => "Internal server error",
            ErrorCode::PayloadTooLarge => "Payload too large",
            ErrorCode::AlreadyBound => "This connection already has a feature set",
            ErrorCode::RateLimited => "Too many requests",
            ErrorCode::AuthFailed => "Authentication failed",
        }
    }

    /// The code named by a frame's command token, if it is one of ours.
    pub fn from_code(code: u16) -> Option<ErrorCode> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code(), self.reason())
    }
}
