//! URLs without their credentials: for `--print-config`, logs and `admin.info`.

/// `url` with its password replaced by `***` (the user name stays: it is not secret).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_start = rest.find('/').unwrap_or(rest.len());
    match rest[..host_start].rfind('@') {
        Some(at) => {
            let user = rest[..at].split_once(':').map_or(&rest[..at], |(u, _)| u);
            let masked = if rest[..at].contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{scheme}://{masked}@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

/// Where `url` points, without any credentials: `redis://host:port/db`, for logs
/// and for `admin.info`.
pub fn redis_address(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host_start = rest.find('/').unwrap_or(rest.len());
    let rest = match rest[..host_start].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    format!("{scheme}://{rest}")
}
