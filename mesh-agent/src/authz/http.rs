//! The HTTP attributes of AuthorizationPolicy: the request path normalized as Istio has
//! Envoy do it (`meshConfig.pathNormalization`), and Istio's matching of `paths`,
//! `hosts` and `methods`.
//!
//! The agent matches policy against the normalized path and forwards that same path to
//! the application. Most path bypasses come from the proxy and the application reading
//! one request two ways; here there is only one reading. [`normalize`] goes in order:
//!
//! 1. rejects what no normalization makes safe (the agent answers 400): an empty target,
//!    anything but origin-form or http(s) absolute-form, control characters, space and
//!    non-ASCII, malformed percent-encoding, and `%00`;
//! 2. takes the path out of the target: absolute-form loses scheme and authority, the
//!    fragment is dropped, the query split off (it never takes part in matching);
//! 3. decodes (`Base`): `\` becomes `/`, percent-encoded unreserved characters are
//!    decoded, other escapes upper-cased; `DecodeAndMergeSlashes` also decodes `%2F` and
//!    `%5C` to `/`;
//! 4. removes dot segments (RFC 3986 §5.2.4), after decoding, so `%2e%2e` counts;
//! 5. merges runs of `/` (`MergeSlashes` and up), after the dots as Envoy does, so
//!    `/a//../b` is `/a/b`.
//!
//! Paths are case-sensitive, as in Istio: a DENY on `/admin` does not cover `/ADMIN`. For
//! an application that folds case, list both, or use an ALLOW list instead.
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Istio's `meshConfig.pathNormalization`; each level does what the one before does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Normalization {
    /// Only the rejections and the query/fragment split. Bypassable: `/a/../admin`
    /// is not `/admin` to policy but is to most applications.
    None,
    /// RFC 3986 §6.2.2 as Envoy's `normalize_path`: `\` to `/`, unreserved characters
    /// decoded, other escapes upper-cased, dot segments removed.
    Base,
    /// `Base`, then runs of `/` merged into one.
    MergeSlashes,
    /// `MergeSlashes`, with `%2F` and `%5C` decoded to `/` before the dots and slashes.
    /// Istio's default is BASE; ours is this, since applications that decode `%2F`
    /// otherwise read `/a%2F..%2Fadmin` as `/admin` after policy saw something else.
    #[default]
    DecodeAndMergeSlashes,
}

impl Normalization {
    pub fn as_str(self) -> &'static str {
        match self {
            Normalization::None => "none",
            Normalization::Base => "base",
            Normalization::MergeSlashes => "merge-slashes",
            Normalization::DecodeAndMergeSlashes => "decode-and-merge-slashes",
        }
    }

    fn merges(self) -> bool {
        matches!(self, Normalization::MergeSlashes | Normalization::DecodeAndMergeSlashes)
    }
}

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Normalization {
    type Err = String;

    /// Our kebab-case names or Istio's (`MERGE_SLASHES`), in any case. Istio's `DEFAULT`
    /// is refused: it means BASE there but would read as our stricter default here.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "none" => Ok(Normalization::None),
            "base" => Ok(Normalization::Base),
            "merge-slashes" => Ok(Normalization::MergeSlashes),
            "decode-and-merge-slashes" => Ok(Normalization::DecodeAndMergeSlashes),
            _ => Err(format!(
                "unknown path normalization {s:?}: expected none, base, merge-slashes or \
                 decode-and-merge-slashes (Istio's NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)"
            )),
        }
    }
}

/// Why a request-target was refused; the agent answers 400 to all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathError {
    Empty,
    /// `*` (asterisk-form): valid only as `OPTIONS *`, which the caller answers itself
    /// (it names no resource, so no `paths` rule can apply to it).
    Asterisk,
    /// Neither `/...` (origin-form) nor `http(s)://authority...` (absolute-form).
    NotOrigin,
    /// A control character, space, DEL or non-ASCII byte, at this offset of the target.
    BadChar {
        at: usize,
        byte: u8,
    },
    /// `%` not followed by two hex digits, at this offset of the path.
    BadPercent {
        at: usize,
    },
    /// `%00`, at this offset of the path.
    EncodedNul {
        at: usize,
    },
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Empty => write!(f, "empty request target"),
            PathError::Asterisk => write!(f, "request target \"*\" is only valid with OPTIONS"),
            PathError::NotOrigin => {
                write!(f, "request target is neither a path starting with '/' nor an absolute http(s) URI")
            }
            PathError::BadChar { at, byte } => write!(
                f,
                "request target has byte 0x{byte:02x} at offset {at}; control characters, space \
                 and non-ASCII must be percent-encoded"
            ),
            PathError::BadPercent { at } => {
                write!(f, "bad percent-encoding at offset {at} of the path: '%' needs two hex digits")
            }
            PathError::EncodedNul { at } => write!(f, "path has an encoded NUL (%00) at offset {at}"),
        }
    }
}

impl std::error::Error for PathError {}

/// A request path after [`normalize`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalizedPath {
    /// What is forwarded, and (without path parameters, see [`Self::match_path`]) what
    /// policy matches. Starts with `/`; never holds `?` or `#`.
    pub path: String,
    /// The query without its `?`, forwarded untouched; `Some("")` for a bare `?`.
    pub query: Option<String>,
    how: Normalization,
}

impl NormalizedPath {
    /// The path that policy `paths` and `notPaths` are matched against: [`Self::path`]
    /// with `;` parameters cut from every segment (`/a;x=1/b;y` is `/a/b`), then dot
    /// segments and slashes normalized again as the mode says. Servlet containers
    /// (Tomcat, Jetty) drop path parameters before routing, so `/admin;x` must meet a
    /// DENY on `/admin`, and `/public/..;/admin`, which they serve as `/admin`, must not
    /// pass an ALLOW on `/public/*`. Envoy matches with the parameters in place, so
    /// here, unlike Istio, `/admin;x` also meets an ALLOW on `/admin`: it is the resource
    /// the application serves. A pattern that itself holds `;` therefore never matches.
    pub fn match_path(&self) -> String {
        if !self.path.contains(';') {
            return self.path.clone();
        }
        let cut: Vec<&str> = self.path.split('/').map(|s| s.split_once(';').map_or(s, |(s, _)| s)).collect();
        let cut = cut.join("/");
        match self.how {
            Normalization::None => cut,
            how => dots_and_slashes(&cut, how),
        }
    }

    /// The origin-form target to forward: the path, and the query if there was one.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Normalizes `raw`, the request-target as received, by the steps in the module doc.
/// `*` is refused as [`PathError::Asterisk`]: the caller lets `OPTIONS *` through on
/// its own terms. Idempotent: normalizing `n.target()` again gives `n` back.
pub fn normalize(raw: &str, how: Normalization) -> Result<NormalizedPath, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw == "*" {
        return Err(PathError::Asterisk);
    }
    if let Some(at) = raw.bytes().position(|b| !b.is_ascii_graphic()) {
        return Err(PathError::BadChar { at, byte: raw.as_bytes()[at] });
    }
    let target = origin_form(raw, how)?;
    let target = target.split_once('#').map_or(&*target, |(t, _)| t);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    let path = decode(path, how)?;
    let path = match how {
        Normalization::None => path,
        how => dots_and_slashes(&path, how),
    };
    Ok(NormalizedPath { path, query, how })
}

/// The origin-form part of the target: the target itself (a leading `\` counts as `/`
/// unless the mode is `None`), or what follows the authority of `http(s)://authority`
/// (`/` if nothing does). That authority is dropped: the agent forwards origin-form
/// with the Host header, and `hosts` is matched on the same header.
fn origin_form(raw: &str, how: Normalization) -> Result<Cow<'_, str>, PathError> {
    if raw.starts_with('/') || (raw.starts_with('\\') && how != Normalization::None) {
        return Ok(Cow::Borrowed(raw));
    }
    let (scheme, rest) = raw.split_once("://").ok_or(PathError::NotOrigin)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(PathError::NotOrigin);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if end == 0 {
        return Err(PathError::NotOrigin);
    }
    match &rest[end..] {
        p if p.starts_with('/') => Ok(Cow::Borrowed(p)),
        p => Ok(Cow::Owned(format!("/{p}"))),
    }
}

/// Checks every escape (two hex digits, not `%00`) and, unless the mode is `None`,
/// decodes: `\` to `/`; unreserved characters (ALPHA, DIGIT, `-._~`) decoded, as they
/// mean the same either way; `%2F` and `%5C` to `/` in `DecodeAndMergeSlashes`; every
/// other escape kept, upper-cased. One pass, so `%252F` stays `%252F`: nothing is
/// decoded twice, which keeps normalization idempotent.
fn decode(path: &str, how: Normalization) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(if b[i] == b'\\' && how != Normalization::None { '/' } else { b[i] as char });
            i += 1;
            continue;
        }
        let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else { return Err(PathError::BadPercent { at: i }) };
        let v = (hi * 16 + lo) as u8;
        if v == 0 {
            return Err(PathError::EncodedNul { at: i });
        }
        match how {
            Normalization::None => out.push_str(&path[i..i + 3]),
            _ if v.is_ascii_alphanumeric() || b"-._~".contains(&v) => out.push(v as char),
            Normalization::DecodeAndMergeSlashes if v == b'/' || v == b'\\' => out.push('/'),
            _ => {
                out.push('%');
                out.push_str(&path[i + 1..i + 3].to_ascii_uppercase());
            }
        }
        i += 3;
    }
    Ok(out)
}

/// Dot segments removed (RFC 3986 §5.2.4: `.` goes, `..` takes the segment before it,
/// a dot segment at the end leaves a trailing `/`, nothing climbs above the root), then
/// runs of `/` merged if the mode merges. The output holds no dot segment, and merging
/// makes none, so a second pass changes nothing.
fn dots_and_slashes(path: &str, how: Normalization) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut segs = path.strip_prefix('/').unwrap_or(path).split('/').peekable();
    while let Some(seg) = segs.next() {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            _ => {
                out.push(seg);
                continue;
            }
        }
        if segs.peek().is_none() {
            out.push("");
        }
    }
    let path = format!("/{}", out.join("/"));
    if !how.merges() {
        return path;
    }
    let mut merged = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    merged
}

/// A `paths` or `notPaths` entry, matched against [`NormalizedPath::match_path`],
/// case-sensitively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    /// `/api/*`
    Prefix(String),
    /// `*.css`
    Suffix(String),
    /// `*`: any non-empty path.
    Presence,
    /// A path holding `{*}` or `{**}` (Istio 1.22+), one entry per `/`-separated segment.
    Template(Vec<Segment>),
}

/// One segment of a path template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `{*}`: exactly one non-empty segment.
    One,
    /// `{**}`: one or more segments, which may be empty (`/a/{**}` takes `/a/` and
    /// `/a/b/c`, not `/a`), as Envoy's `**` does: Istio's "zero or more globs".
    Rest,
}

impl Segment {
    fn matches(&self, seg: &str) -> bool {
        match self {
            Segment::Literal(l) => l == seg,
            Segment::One => !seg.is_empty(),
            Segment::Rest => true,
        }
    }
}

impl PathPattern {
    /// Istio's reading of a `paths` entry: a template if it holds `{*}` or `{**}`;
    /// otherwise `*` alone, a leading `*` (suffix), a trailing `*` (prefix), or exact.
    /// Refused as Istio's validation refuses them: empty, `{` or `}` outside a template,
    /// and templates with `*`, `{`, `}` outside a whole-segment operator, an empty
    /// segment before the last, or an operator after `{**}`.
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if s.is_empty() {
            return Err("empty path in policy".into());
        }
        if s.contains("{*}") || s.contains("{**}") {
            return template(s);
        }
        if s.contains(['{', '}']) {
            return Err(format!("path {s:?}: '{{' and '}}' are allowed only in the operators {{*}} and {{**}}"));
        }
        Ok(match wildcard(s) {
            Wildcard::Any => PathPattern::Presence,
            Wildcard::Prefix(p) => PathPattern::Prefix(p.into()),
            Wildcard::Suffix(p) => PathPattern::Suffix(p.into()),
            Wildcard::Exact(p) => PathPattern::Exact(p.into()),
        })
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => path == p,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
            PathPattern::Suffix(p) => path.ends_with(p.as_str()),
            PathPattern::Presence => !path.is_empty(),
            PathPattern::Template(t) => template_matches(t, path),
        }
    }
}

fn template(s: &str) -> Result<PathPattern, String> {
    let body = s.strip_prefix('/').ok_or_else(|| format!("path template {s:?} must start with '/'"))?;
    let parts: Vec<&str> = body.split('/').collect();
    let mut segs = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let seg = match *part {
            "{*}" => Segment::One,
            "{**}" => Segment::Rest,
            p if p.contains(['*', '{', '}']) => {
                return Err(format!(
                    "path template {s:?}: segment {p:?} has '*', '{{' or '}}' outside {{*}} or {{**}}, \
                     which must stand alone between slashes"
                ))
            }
            "" if i + 1 < parts.len() => return Err(format!("path template {s:?} has an empty segment")),
            p => Segment::Literal(p.into()),
        };
        if !matches!(seg, Segment::Literal(_)) && segs.contains(&Segment::Rest) {
            return Err(format!("path template {s:?}: {{**}} must be the last operator"));
        }
        segs.push(seg);
    }
    Ok(PathPattern::Template(segs))
}

/// Segment by segment; `{**}` takes whatever the segments around it leave, at least one.
/// `{*}` and `{**}` take any character but `/`, where Envoy takes only RFC 3986 pchar
/// minus `*` and `=`: a DENY on `/api/{*}/delete` also catches `/api/a=b/delete`.
fn template_matches(t: &[Segment], path: &str) -> bool {
    let Some(path) = path.strip_prefix('/') else { return false };
    let segs: Vec<&str> = path.split('/').collect();
    let all = |t: &[Segment], s: &[&str]| t.iter().zip(s).all(|(t, s)| t.matches(s));
    match t.iter().position(|s| *s == Segment::Rest) {
        None => t.len() == segs.len() && all(t, &segs),
        Some(r) => {
            let tail = &t[r + 1..];
            segs.len() > r + tail.len() && all(&t[..r], &segs) && all(tail, &segs[segs.len() - tail.len()..])
        }
    }
}

/// `hosts` and `notHosts`, against the request's authority (Host or `:authority`).
/// Case-insensitive, as in Istio; `*` takes any non-empty authority, `*.example.com`
/// any host ending in `.example.com` (not `example.com` itself), `example.*` any host
/// starting `example.`. A pattern without a port takes any port or none; with one
/// (`example.com:8080`, `[::1]:8080`), the authority must carry that port (`*` for
/// any), compared as numbers. A request without a port never meets a pattern with one:
/// we do not guess 80 or 443. Beyond Istio, brackets of IPv6 literals and one trailing
/// dot are ignored on both sides (`example.com.` is the same DNS name).
pub fn host_matches(pattern: &str, authority: &str) -> bool {
    if authority.is_empty() {
        return false;
    }
    let (host, port) = split_port(authority);
    let (phost, pport) = split_port(pattern);
    let port_ok = match pport {
        None | Some("*") => true,
        Some(p) => {
            port.is_some_and(|a| a == p || matches!((a.parse::<u16>(), p.parse::<u16>()), (Ok(a), Ok(p)) if a == p))
        }
    };
    port_ok && wildcard_matches(bare(phost), bare(host), true)
}

/// `methods`: exact, case-sensitive (HTTP methods are), with the same `*` forms as paths.
pub fn method_matches(pattern: &str, method: &str) -> bool {
    wildcard_matches(pattern, method, false)
}

/// Host and port; `[v6]:port` bracket-aware. A bare IPv6 address (several colons, no
/// brackets) has no port.
fn split_port(s: &str) -> (&str, Option<&str>) {
    if let Some(end) = s.starts_with('[').then(|| s.find(']')).flatten() {
        let (host, rest) = s.split_at(end + 1);
        return match rest {
            "" => (host, None),
            r => r.strip_prefix(':').map_or((s, None), |p| (host, Some(p))),
        };
    }
    match s.split_once(':') {
        Some((h, p)) if !p.contains(':') => (h, Some(p)),
        _ => (s, None),
    }
}

fn bare(host: &str) -> &str {
    let h = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    h.strip_suffix('.').unwrap_or(h)
}

/// Istio's reading of a string in policy, checked in this order.
enum Wildcard<'a> {
    Any,
    Suffix(&'a str),
    Prefix(&'a str),
    Exact(&'a str),
}

fn wildcard(p: &str) -> Wildcard<'_> {
    if p == "*" {
        Wildcard::Any
    } else if let Some(s) = p.strip_prefix('*') {
        Wildcard::Suffix(s)
    } else if let Some(s) = p.strip_suffix('*') {
        Wildcard::Prefix(s)
    } else {
        Wildcard::Exact(p)
    }
}

/// On bytes, so that slicing never splits a character of a hostile value.
fn wildcard_matches(pattern: &str, v: &str, fold: bool) -> bool {
    let eq = |a: &[u8], b: &str| if fold { a.eq_ignore_ascii_case(b.as_bytes()) } else { a == b.as_bytes() };
    let v = v.as_bytes();
    match wildcard(pattern) {
        Wildcard::Any => !v.is_empty(),
        Wildcard::Suffix(s) => v.len() >= s.len() && eq(&v[v.len() - s.len()..], s),
        Wildcard::Prefix(p) => v.len() >= p.len() && eq(&v[..p.len()], p),
        Wildcard::Exact(x) => eq(v, x),
    }
}

#[cfg(test)]
mod tests;
