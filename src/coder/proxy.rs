//! Which way the requests to Coder go: straight to the server, or through the
//! proxy the environment names. The rules are those of Go's net/http
//! (`golang.org/x/net/http/httpproxy`), which Coder and `coder agent` use, so
//! this tool and the agent it starts take the same way:
//!
//! - the proxy is `HTTPS_PROXY`/`https_proxy` for an https URL and
//!   `HTTP_PROXY`/`http_proxy` for an http URL (upper case first, empty values
//!   skipped), then `ALL_PROXY`/`all_proxy` as a last fallback (Go ignores it;
//!   curl honours it);
//! - `localhost` and loopback addresses are never proxied;
//! - `NO_PROXY`/`no_proxy` lists, comma-separated, the hosts that go direct:
//!   `*`, IP addresses, CIDR ranges, domains (`foo.com` is foo.com and its
//!   subdomains, `.foo.com` and `*.foo.com` only its subdomains), each IP or
//!   domain optionally with `:PORT` (`[v6]:PORT` for IPv6). Case does not matter.
//!
//! [`route`] decides from an environment passed in (pure, tested form by form);
//! [`Route::apply`] gives the decision to reqwest explicitly, so reqwest's own
//! reading of the environment never takes part.

use std::fmt;
use std::net::IpAddr;

use url::{Host, Url};

/// The way requests to one origin go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Straight to the server.
    Direct(Direct),
    /// Through the proxy at `url`, taken from the variable `var`; `no_proxy`
    /// is the NO_PROXY list in effect ("" if none). The URL may hold
    /// credentials: show [`Route::shown_proxy`], never `url` itself.
    Proxy {
        var: &'static str,
        url: Url,
        no_proxy: String,
    },
}

/// Why a request goes straight to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direct {
    /// No proxy variable applies to this URL's scheme.
    Unset,
    /// `var` names a proxy, but the host is `localhost` or a loopback address.
    Loopback { var: &'static str },
    /// `var` names a proxy, but the entry `entry` of `no_proxy_var` matches the host.
    Excluded {
        var: &'static str,
        no_proxy_var: &'static str,
        entry: String,
    },
}

/// A proxy setting that cannot be used. The message names the variable and the
/// fix, and never repeats the value (it may hold credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError(String);

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProxyError {}

const HTTPS_VARS: [&str; 2] = ["HTTPS_PROXY", "https_proxy"];
const HTTP_VARS: [&str; 2] = ["HTTP_PROXY", "http_proxy"];
const ALL_VARS: [&str; 2] = ["ALL_PROXY", "all_proxy"];
const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// The first of `names` that is set to something other than blanks.
fn first_set(
    names: &[&'static str],
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(&'static str, String)> {
    names.iter().find_map(|n| {
        env(n)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (*n, v.trim().to_string()))
    })
}

/// The way requests to `target`'s origin go, given the environment `env`.
pub fn route(target: &Url, env: &dyn Fn(&str) -> Option<String>) -> Result<Route, ProxyError> {
    let scheme_vars: &[&'static str] = match target.scheme() {
        "https" => &HTTPS_VARS,
        "http" => &HTTP_VARS,
        _ => return Ok(Route::Direct(Direct::Unset)),
    };
    let Some((var, value)) = first_set(scheme_vars, env).or_else(|| first_set(&ALL_VARS, env))
    else {
        return Ok(Route::Direct(Direct::Unset));
    };
    let Some(host) = target.host() else {
        return Ok(Route::Direct(Direct::Unset));
    };
    if is_loopback(&host) {
        return Ok(Route::Direct(Direct::Loopback { var }));
    }
    let no_proxy = first_set(&NO_PROXY_VARS, env);
    if let Some((no_proxy_var, list)) = &no_proxy {
        let port = target.port_or_known_default().unwrap_or(0);
        if let Some(entry) = NoProxy::parse(list).matching(&host, port) {
            return Ok(Route::Direct(Direct::Excluded {
                var,
                no_proxy_var,
                entry: entry.to_string(),
            }));
        }
    }
    // Under CGI, HTTP_PROXY may come from a request's `Proxy:` header
    // ("httpoxy"); Go refuses to use it there, and so does this tool.
    let cgi = env("REQUEST_METHOD").is_some_and(|m| !m.is_empty());
    if cgi && HTTP_VARS.contains(&var) {
        return Err(ProxyError(format!(
            "{var} is refused because REQUEST_METHOD is set: in a CGI program a request's Proxy: header \
             arrives as HTTP_PROXY; fix: unset REQUEST_METHOD if this is not a CGI program, else unset {var} \
             (or add the Coder host to NO_PROXY)"
        )));
    }
    Ok(Route::Proxy {
        var,
        url: parse_proxy(var, &value)?,
        no_proxy: no_proxy.map(|(_, list)| list).unwrap_or_default(),
    })
}

/// What of a proxy URL is secret, in the forms a proxy's error page or a
/// program's stderr may repeat it: the whole URL, `user:password` and its
/// base64 (`Proxy-Authorization: Basic …`), and the password (as written
/// in the URL and percent-decoded). The user name alone is not: it is an
/// account's name, often a word ("agent", "proxy") that Coder's own
/// messages and agent names use, which would be withheld there too.
pub fn credentials_of(url: &Url) -> Vec<String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(url.username());
    let password = url.password();
    if user.is_empty() && password.is_none() {
        return Vec::new();
    }
    let pair = format!("{user}:{}", password.map(decode).unwrap_or_default());
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&pair)
    };
    let mut out = vec![url.as_str().to_string(), pair, basic];
    if let Some(p) = password {
        out.push(decode(p));
        out.push(p.to_string());
    }
    out
}

/// The credentials of every proxy variable set in `env`, whether or not it
/// is the one used for Coder, and whatever its scheme (a `socks5://` proxy
/// is refused for Coder, but its password is still a secret): a header
/// command inherits them all, and may repeat them on its stderr.
pub fn env_credentials(env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let mut out = Vec::new();
    for var in HTTPS_VARS.iter().chain(&HTTP_VARS).chain(&ALL_VARS) {
        if let Some((_, value)) = first_set(&[var], env) {
            let url = Url::parse(&value)
                .ok()
                .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()))
                .or_else(|| Url::parse(&format!("http://{value}")).ok());
            if let Some(url) = url {
                out.extend(credentials_of(&url));
            }
        }
    }
    out
}

/// The way requests to `target`'s origin go, from this process's environment.
pub fn route_from_env(target: &Url) -> Result<Route, ProxyError> {
    route(target, &|name| {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    })
}

/// A proxy URL as Go reads it: a full URL, or `host:port` meaning http.
fn parse_proxy(var: &str, value: &str) -> Result<Url, ProxyError> {
    let url = match Url::parse(value) {
        Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => u,
        // Go retries any value with http:// in front; one that already has
        // "://" would only become nonsense (http://http://...).
        first => match Url::parse(&format!("http://{value}")) {
            Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) && !value.contains("://") => u,
            _ => {
                let why = match first {
                    Err(e) => e.to_string(),
                    Ok(_) => "no host".to_string(),
                };
                return Err(ProxyError(format!(
                    "{var} is not a usable proxy URL ({why}); fix: set it to http://HOST:PORT \
                     (credentials as http://USER:PASSWORD@HOST:PORT), unset it, or add the Coder host to NO_PROXY"
                )));
            }
        },
    };
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(ProxyError(format!(
            "{var} names a {other}:// proxy; only http:// and https:// proxies are supported; \
             fix: use an HTTP proxy, unset {var}, or add the Coder host to NO_PROXY"
        ))),
    }
}

/// Go's rule: `localhost` and loopback addresses (127.0.0.0/8, ::1, and
/// IPv4-mapped 127.x) are never proxied.
fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => IpAddr::V6(*ip).to_canonical().is_loopback(),
    }
}

/// A parsed NO_PROXY list.
#[derive(Debug, Default)]
struct NoProxy {
    entries: Vec<(String, Rule)>,
}

#[derive(Debug)]
enum Rule {
    /// `*`: every host.
    All,
    /// `ADDR/BITS`: every address in the range (any port).
    Cidr { net: IpAddr, bits: u8 },
    /// `ADDR` or `ADDR:PORT` / `[ADDR]:PORT`.
    Ip { ip: IpAddr, port: Option<String> },
    /// A domain, stored with a leading dot: `.foo.com`; `exact` when the entry
    /// had no leading dot (`foo.com` matches foo.com itself too).
    Domain {
        suffix: String,
        exact: bool,
        port: Option<String>,
    },
}

impl NoProxy {
    /// Go's parse: entries split on commas, trimmed, lowercased; what cannot
    /// be read is ignored.
    fn parse(list: &str) -> NoProxy {
        let mut entries = Vec::new();
        for raw in list.split(',') {
            let p = raw.trim().to_lowercase();
            if p.is_empty() {
                continue;
            }
            if let Some(rule) = Rule::parse(&p) {
                entries.push((p, rule));
            }
        }
        NoProxy { entries }
    }

    /// The first entry that matches `host` at `port`.
    fn matching(&self, host: &Host<&str>, port: u16) -> Option<&str> {
        let port = port.to_string();
        self.entries
            .iter()
            .find(|(_, rule)| rule.matches(host, &port))
            .map(|(text, _)| text.as_str())
    }
}

impl Rule {
    fn parse(p: &str) -> Option<Rule> {
        if p == "*" {
            return Some(Rule::All);
        }
        if let Some(rule) = parse_cidr(p) {
            return Some(rule);
        }
        let (host, port) = match split_host_port(p) {
            Some((h, port)) => (h, Some(port).filter(|s| !s.is_empty())),
            // Go would read "[v6]" without a port as a domain that never
            // matches; it plainly means the address.
            None => (
                p.strip_prefix('[')
                    .and_then(|s| s.strip_suffix(']'))
                    .unwrap_or(p),
                None,
            ),
        };
        if host.is_empty() {
            return None;
        }
        let port = port.map(str::to_string);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Some(Rule::Ip {
                ip: ip.to_canonical(),
                port,
            });
        }
        // `*.foo.com` is `.foo.com`.
        let host = host
            .strip_prefix('*')
            .filter(|rest| rest.starts_with('.'))
            .unwrap_or(host);
        let (exact, bare) = match host.strip_prefix('.') {
            Some(rest) => (false, rest),
            None => (true, host),
        };
        Some(Rule::Domain {
            suffix: format!(".{}", to_ascii(bare)),
            exact,
            port,
        })
    }

    fn matches(&self, host: &Host<&str>, port: &str) -> bool {
        let port_ok = |want: &Option<String>| want.as_deref().is_none_or(|w| w == port);
        let ip = match host {
            Host::Domain(_) => None,
            Host::Ipv4(v4) => Some(IpAddr::V4(*v4)),
            Host::Ipv6(v6) => Some(IpAddr::V6(*v6).to_canonical()),
        };
        match (self, ip) {
            (Rule::All, _) => true,
            (Rule::Cidr { net, bits }, Some(ip)) => in_range(ip, *net, *bits),
            (Rule::Ip { ip: want, port: p }, Some(ip)) => *want == ip && port_ok(p),
            (
                Rule::Domain {
                    suffix,
                    exact,
                    port: p,
                },
                None,
            ) => {
                let Host::Domain(name) = host else {
                    return false;
                };
                let name = name.to_ascii_lowercase();
                (name.ends_with(suffix.as_str()) || (*exact && name == suffix[1..])) && port_ok(p)
            }
            _ => false,
        }
    }
}

/// A non-ASCII domain in its ASCII (punycode) form, as hosts in URLs are.
fn to_ascii(domain: &str) -> String {
    if domain.is_ascii() {
        return domain.to_string();
    }
    match Host::parse(domain) {
        Ok(Host::Domain(d)) => d,
        _ => domain.to_string(),
    }
}

/// `ADDR/BITS` as Go's net.ParseCIDR reads it.
fn parse_cidr(p: &str) -> Option<Rule> {
    let (addr, bits) = p.split_once('/')?;
    let net: IpAddr = addr.parse().ok()?;
    if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = bits.parse().ok()?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some(Rule::Cidr { net, bits })
}

fn in_range(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Go's net.SplitHostPort: `host:port` or `[host]:port`, with no other colon
/// outside the brackets; `None` when there is no port part.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    let last = s.rfind(':')?;
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')? + 1;
        if end + 1 != last {
            return None;
        }
        let host = &s[1..end];
        let port = &s[last + 1..];
        (!host.contains('[') && !port.contains(['[', ']'])).then_some((host, port))
    } else {
        let host = &s[..last];
        let port = &s[last + 1..];
        (!host.contains([':', '[', ']']) && !port.contains(['[', ']'])).then_some((host, port))
    }
}

impl Route {
    /// The proxy without credentials, path or query: `http://proxy:3128/`.
    pub fn shown_proxy(&self) -> Option<String> {
        let Route::Proxy { url, .. } = self else {
            return None;
        };
        let mut u = url.clone();
        let _ = u.set_username("");
        let _ = u.set_password(None);
        u.set_path("/");
        u.set_query(None);
        u.set_fragment(None);
        Some(u.to_string())
    }

    /// What of the proxy setting is secret (see [`credentials_of`]).
    pub fn credentials(&self) -> Vec<String> {
        match self {
            Route::Proxy { url, .. } => credentials_of(url),
            Route::Direct(_) => Vec::new(),
        }
    }

    /// Does the connection to the proxy itself use TLS (an https:// proxy)?
    pub fn proxy_uses_tls(&self) -> bool {
        matches!(self, Route::Proxy { url, .. } if url.scheme() == "https")
    }

    pub fn is_proxied(&self) -> bool {
        matches!(self, Route::Proxy { .. })
    }

    /// The way, in words (never with credentials): "through the proxy
    /// HTTP_PROXY=http://proxy:3128/, ..." or "direct, ...".
    pub fn describe(&self) -> String {
        match self {
            Route::Proxy { var, no_proxy, .. } => format!(
                "through the proxy {var}={}, NO_PROXY={no_proxy:?}; check the proxy, or add the Coder host to NO_PROXY",
                self.shown_proxy().unwrap_or_default(),
            ),
            Route::Direct(Direct::Unset) => "direct: no proxy variable applies".to_string(),
            Route::Direct(Direct::Loopback { var }) => format!(
                "direct, not through {var}: localhost and loopback addresses are never proxied"
            ),
            Route::Direct(Direct::Excluded {
                var,
                no_proxy_var,
                entry,
            }) => format!("direct, not through {var}: {no_proxy_var} entry {entry:?} matches"),
        }
    }

    /// A note for error messages: the proxy in use, or why a proxy variable
    /// that is set was not used; empty when no proxy variable applies.
    pub fn note(&self) -> String {
        match self {
            Route::Direct(Direct::Unset) => String::new(),
            _ => format!(" ({})", self.describe()),
        }
    }

    /// Apply this route to a reqwest client that only ever talks to the
    /// origin it was decided for: no proxy at all, or exactly this one.
    pub fn apply(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, ProxyError> {
        match self {
            Route::Direct(_) => {
                tracing::debug!("requests to Coder go {}", self.describe());
                Ok(builder.no_proxy())
            }
            Route::Proxy { var, url, .. } => {
                // reqwest's error would not name the variable, and might show the URL.
                let proxy = reqwest::Proxy::all(url.clone()).map_err(|_| {
                    ProxyError(format!(
                        "{var} is not a usable proxy URL; fix: set it to http://HOST:PORT, unset it, \
                         or add the Coder host to NO_PROXY"
                    ))
                })?;
                tracing::debug!("requests to Coder go {}", self.describe());
                Ok(builder.proxy(proxy))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn route_of(target: &str, vars: &[(&str, &str)]) -> Result<Route, ProxyError> {
        route(&Url::parse(target).unwrap(), &env_of(vars))
    }

    /// "proxy" when proxied, else "direct".
    fn way(target: &str, no_proxy: &str) -> &'static str {
        let vars = [
            ("HTTP_PROXY", "http://proxy.corp:3128"),
            ("HTTPS_PROXY", "http://proxy.corp:3128"),
            ("NO_PROXY", no_proxy),
        ];
        match route_of(target, &vars).unwrap() {
            Route::Proxy { .. } => "proxy",
            Route::Direct(_) => "direct",
        }
    }

    #[test]
    fn no_proxy_forms() {
        // (NO_PROXY, URL, expected): each form, matching and not matching.
        let table: &[(&str, &str, &str)] = &[
            // Nothing listed.
            ("", "http://coder.example.com", "proxy"),
            (" , ,", "http://coder.example.com", "proxy"),
            // `*`, anywhere in the list, for names and addresses.
            ("*", "http://coder.example.com", "direct"),
            ("*", "http://10.1.2.3:3000", "direct"),
            ("*", "https://[2001:db8::1]", "direct"),
            ("foo.com, * ,bar", "http://10.1.2.3", "direct"),
            ("*foo.com", "http://x.foo.com", "proxy"),
            // Domains: the name and its subdomains, on label boundaries.
            ("example.com", "http://example.com", "direct"),
            ("example.com", "http://coder.example.com", "direct"),
            ("example.com", "http://a.b.example.com:8080", "direct"),
            ("example.com", "http://badexample.com", "proxy"),
            ("example.com", "http://example.com.evil.net", "proxy"),
            ("coder.example.com", "http://example.com", "proxy"),
            // Leading dot and `*.`: subdomains only (Go; curl also matches the name).
            (".example.com", "http://coder.example.com", "direct"),
            (".example.com", "http://example.com", "proxy"),
            ("*.example.com", "http://coder.example.com", "direct"),
            ("*.example.com", "http://example.com", "proxy"),
            // Case-insensitive both ways.
            ("Coder.EXAMPLE.com", "http://CODER.example.COM", "direct"),
            // Domain with a port: only that port (the scheme's default when none is given).
            (
                "coder.example.com:3000",
                "http://coder.example.com:3000",
                "direct",
            ),
            (
                "coder.example.com:3000",
                "http://coder.example.com:3001",
                "proxy",
            ),
            (
                "coder.example.com:3000",
                "http://coder.example.com",
                "proxy",
            ),
            ("coder.example.com:80", "http://coder.example.com", "direct"),
            (
                "coder.example.com:443",
                "https://coder.example.com",
                "direct",
            ),
            ("coder.example.com:443", "http://coder.example.com", "proxy"),
            (
                ".example.com:3000",
                "http://coder.example.com:3000",
                "direct",
            ),
            (
                "*.example.com:3000",
                "http://coder.example.com:3001",
                "proxy",
            ),
            ("coder.example.com:", "http://coder.example.com:9", "direct"),
            // IPv4 addresses, with and without a port.
            ("10.1.2.3", "http://10.1.2.3", "direct"),
            ("10.1.2.3", "http://10.1.2.3:3000", "direct"),
            ("10.1.2.3", "http://10.1.2.4", "proxy"),
            ("10.1.2.3:3000", "http://10.1.2.3:3000", "direct"),
            ("10.1.2.3:3000", "http://10.1.2.3:3001", "proxy"),
            ("10.1.2.3:443", "https://10.1.2.3", "direct"),
            // An address never matches as a name, nor a name as an address.
            ("2.3", "http://10.1.2.3", "proxy"),
            ("10.1.2.3", "http://10.1.2.3.example.com", "proxy"),
            // CIDR ranges (any port).
            ("10.0.0.0/8", "http://10.1.2.3:3000", "direct"),
            ("10.1.2.0/24", "http://10.1.3.1", "proxy"),
            ("10.1.2.3/32", "http://10.1.2.3", "direct"),
            ("0.0.0.0/0", "http://192.0.2.1", "direct"),
            ("10.0.0.0/33", "http://10.1.2.3", "proxy"),
            ("10.0.0.0/x", "http://10.1.2.3", "proxy"),
            // Go's ParseCIDR takes digits only; Rust's u8 parser would take "+8".
            ("10.0.0.0/+8", "http://10.1.2.3", "proxy"),
            ("10.0.0.0/", "http://10.1.2.3", "proxy"),
            ("2001:db8::/32", "http://[2001:db8:1::5]:3000", "direct"),
            ("2001:db8::/32", "http://[2001:db9::5]", "proxy"),
            ("10.0.0.0/8", "http://[2001:db8::1]", "proxy"),
            // IPv6 addresses: bare, bracketed, bracketed with a port.
            ("2001:db8::1", "http://[2001:db8::1]", "direct"),
            ("[2001:db8::1]", "http://[2001:db8::1]:3000", "direct"),
            ("[2001:db8::1]:3000", "http://[2001:db8::1]:3000", "direct"),
            ("[2001:db8::1]:3000", "http://[2001:db8::1]:3001", "proxy"),
            ("2001:DB8::1", "http://[2001:db8::1]", "direct"),
            // IPv4-mapped IPv6 is the IPv4 address (Go's IP.Equal).
            ("10.1.2.3", "http://[::ffff:10.1.2.3]", "direct"),
            ("::ffff:10.1.2.3", "http://10.1.2.3", "direct"),
            ("10.0.0.0/8", "http://[::ffff:10.1.2.3]", "direct"),
            // Lists: commas, blanks trimmed, unreadable entries skipped.
            (
                "foo.com, 10.9.9.9 ,  coder.example.com:3000",
                "http://coder.example.com:3000",
                "direct",
            ),
            ("foo.com bar.com", "http://bar.com", "proxy"),
            (":3000, [], *.", "http://coder.example.com:3000", "proxy"),
            // Internationalised names compare in their ASCII form.
            ("bücher.example", "http://shop.bücher.example", "direct"),
            ("xn--bcher-kva.example", "http://bücher.example", "direct"),
        ];
        let mut wrong = Vec::new();
        for (no_proxy, url, want) in table {
            let got = way(url, no_proxy);
            if got != *want {
                wrong.push(format!(
                    "NO_PROXY={no_proxy:?} {url}: got {got}, want {want}"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn loopback_is_never_proxied() {
        for url in [
            "http://localhost:3000",
            "http://LOCALHOST",
            "https://localhost",
            "http://127.0.0.1:3000",
            "http://127.1.2.3",
            "http://[::1]:3000",
            "http://[::ffff:127.0.0.1]",
        ] {
            assert_eq!(
                route_of(url, &[("HTTP_PROXY", "p:1"), ("HTTPS_PROXY", "p:1")]).unwrap(),
                Route::Direct(Direct::Loopback {
                    var: if url.starts_with("https") {
                        "HTTPS_PROXY"
                    } else {
                        "HTTP_PROXY"
                    }
                }),
                "{url}"
            );
        }
        // Go's rule is exactly "localhost", not its subdomains.
        assert_eq!(way("http://coder.localhost", ""), "proxy");
        assert_eq!(way("http://128.0.0.1", ""), "proxy");
    }

    #[test]
    fn which_variable_applies() {
        let p = |var: &'static str, url: &str| Route::Proxy {
            var,
            url: Url::parse(url).unwrap(),
            no_proxy: String::new(),
        };
        let http = "http://coder.example.com";
        let https = "https://coder.example.com";
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Route);
        let cases: Vec<Case> = vec![
            ("nothing set", vec![], Route::Direct(Direct::Unset)),
            // The scheme picks the variable; the other scheme's is never used.
            (
                http,
                vec![("HTTP_PROXY", "http://h:1")],
                p("HTTP_PROXY", "http://h:1"),
            ),
            (
                https,
                vec![("HTTP_PROXY", "http://h:1")],
                Route::Direct(Direct::Unset),
            ),
            (
                https,
                vec![("HTTPS_PROXY", "http://s:1")],
                p("HTTPS_PROXY", "http://s:1"),
            ),
            (
                http,
                vec![("HTTPS_PROXY", "http://s:1")],
                Route::Direct(Direct::Unset),
            ),
            // Upper case first; an empty or blank value counts as unset.
            (
                http,
                vec![
                    ("HTTP_PROXY", "http://up:1"),
                    ("http_proxy", "http://low:1"),
                ],
                p("HTTP_PROXY", "http://up:1"),
            ),
            (
                http,
                vec![("HTTP_PROXY", ""), ("http_proxy", "http://low:1")],
                p("http_proxy", "http://low:1"),
            ),
            (
                https,
                vec![("HTTPS_PROXY", "  "), ("https_proxy", "http://low:1")],
                p("https_proxy", "http://low:1"),
            ),
            // ALL_PROXY only when the scheme's variable is unset.
            (
                http,
                vec![("ALL_PROXY", "http://a:1")],
                p("ALL_PROXY", "http://a:1"),
            ),
            (
                https,
                vec![("all_proxy", "http://a:1")],
                p("all_proxy", "http://a:1"),
            ),
            (
                https,
                vec![("ALL_PROXY", "http://a:1"), ("HTTPS_PROXY", "http://s:1")],
                p("HTTPS_PROXY", "http://s:1"),
            ),
            // NO_PROXY before no_proxy; an empty NO_PROXY falls through.
            (
                http,
                vec![
                    ("HTTP_PROXY", "http://h:1"),
                    ("NO_PROXY", "other.com"),
                    ("no_proxy", "*"),
                ],
                Route::Proxy {
                    var: "HTTP_PROXY",
                    url: Url::parse("http://h:1").unwrap(),
                    no_proxy: "other.com".into(),
                },
            ),
            (
                http,
                vec![
                    ("HTTP_PROXY", "http://h:1"),
                    ("NO_PROXY", ""),
                    ("no_proxy", "*"),
                ],
                Route::Direct(Direct::Excluded {
                    var: "HTTP_PROXY",
                    no_proxy_var: "no_proxy",
                    entry: "*".into(),
                }),
            ),
            // host:port means http, as Go reads it.
            (
                http,
                vec![("HTTP_PROXY", "proxy.corp:3128")],
                p("HTTP_PROXY", "http://proxy.corp:3128"),
            ),
            (
                http,
                vec![("HTTP_PROXY", "10.0.0.1:3128")],
                p("HTTP_PROXY", "http://10.0.0.1:3128"),
            ),
            (
                https,
                vec![("HTTPS_PROXY", "https://s:1")],
                p("HTTPS_PROXY", "https://s:1"),
            ),
        ];
        for (url, vars, want) in cases {
            let url = if url == "nothing set" { http } else { url };
            assert_eq!(route_of(url, &vars).unwrap(), want, "{url} {vars:?}");
        }
    }

    #[test]
    fn unusable_proxies_are_errors_that_withhold_the_value() {
        for (value, says) in [
            ("socks5://user:hunter2@s:1080", "socks5:// proxy"),
            ("ftp://user:hunter2@s:21", "ftp:// proxy"),
            ("http://user:hunter2@[::1", "not a usable proxy URL"),
            ("http://user:hunter2@h:99999", "not a usable proxy URL"),
        ] {
            let e = route_of("http://coder.example.com", &[("HTTP_PROXY", value)]).unwrap_err();
            let e = e.to_string();
            assert!(e.contains("HTTP_PROXY") && e.contains(says), "{value}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("fix:"), "{e}");
        }
        // A host NO_PROXY exempts never fails on the proxy's value.
        assert!(matches!(
            route_of(
                "http://coder.example.com",
                &[("HTTP_PROXY", "socks5://s"), ("NO_PROXY", "example.com")]
            ),
            Ok(Route::Direct(Direct::Excluded { .. }))
        ));
        assert!(matches!(
            route_of("http://localhost", &[("HTTP_PROXY", "socks5://s")]),
            Ok(Route::Direct(Direct::Loopback { .. }))
        ));
    }

    #[test]
    fn cgi_refuses_http_proxy_only() {
        let cgi = |vars: &[(&str, &str)], url: &str| {
            let mut v = vars.to_vec();
            v.push(("REQUEST_METHOD", "GET"));
            route_of(url, &v)
        };
        for var in ["HTTP_PROXY", "http_proxy"] {
            let e = cgi(&[(var, "http://u:hunter2@h:1")], "http://coder.example.com").unwrap_err();
            assert!(e.to_string().starts_with(var), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        // Not for https, nor ALL_PROXY, nor when the host goes direct anyway.
        assert!(cgi(&[("HTTPS_PROXY", "h:1")], "https://coder.example.com")
            .unwrap()
            .is_proxied());
        assert!(cgi(&[("ALL_PROXY", "h:1")], "http://coder.example.com")
            .unwrap()
            .is_proxied());
        assert!(!cgi(
            &[("HTTP_PROXY", "h:1"), ("NO_PROXY", "*")],
            "http://coder.example.com"
        )
        .unwrap()
        .is_proxied());
    }

    #[test]
    fn notes_never_show_credentials() {
        let r = route_of(
            "http://coder.example.com",
            &[
                (
                    "HTTP_PROXY",
                    "http://user:hunter2@proxy.corp:3128/path?key=sekrit",
                ),
                ("NO_PROXY", " a.com "),
            ],
        )
        .unwrap();
        assert_eq!(r.shown_proxy().unwrap(), "http://proxy.corp:3128/");
        let note = r.note();
        assert!(
            note.contains("HTTP_PROXY=http://proxy.corp:3128/"),
            "{note}"
        );
        assert!(note.contains("NO_PROXY=\"a.com\""), "{note}");
        assert!(!note.contains("hunter2") && !note.contains("user") && !note.contains("sekrit"));
        // And the URL given to reqwest keeps them.
        let Route::Proxy { url, .. } = &r else {
            unreachable!()
        };
        assert_eq!(url.password(), Some("hunter2"));

        let direct = route_of(
            "http://coder.example.com",
            &[
                ("HTTP_PROXY", "http://u:hunter2@p:1"),
                ("no_proxy", "x.org, .example.com"),
            ],
        )
        .unwrap();
        assert_eq!(
            direct.note(),
            " (direct, not through HTTP_PROXY: no_proxy entry \".example.com\" matches)"
        );
        assert_eq!(route_of("http://c.org", &[]).unwrap().note(), "");
    }

    #[test]
    fn the_secret_forms_of_proxy_credentials() {
        let url = Url::parse("http://svc-coder:p%40ss-w0rd@proxy.corp:3128").unwrap();
        let c = credentials_of(&url);
        for form in [
            "http://svc-coder:p%40ss-w0rd@proxy.corp:3128/",
            "svc-coder:p@ss-w0rd",
            // Proxy-Authorization: Basic …
            "c3ZjLWNvZGVyOnBAc3MtdzByZA==",
            "p@ss-w0rd",
            "p%40ss-w0rd",
        ] {
            assert!(c.iter().any(|f| f == form), "{form}: {c:?}");
        }
        // The account's name alone is not held: Coder's messages and agent
        // names may use the same word.
        assert!(!c.iter().any(|f| f == "svc-coder"), "{c:?}");
        assert!(credentials_of(&Url::parse("http://proxy.corp:3128").unwrap()).is_empty());
        // A password with no user name, and a user name with no password
        // (whose Basic form is still sent), are credentials too.
        let c = credentials_of(&Url::parse("http://:s3cr3t@proxy.corp:3128").unwrap());
        assert!(c.iter().any(|f| f == "s3cr3t"), "{c:?}");
        let c = credentials_of(&Url::parse("http://agent@proxy.corp:3128").unwrap());
        for form in ["http://agent@proxy.corp:3128/", "agent:", "YWdlbnQ6"] {
            assert!(c.iter().any(|f| f == form), "{form}: {c:?}");
        }
    }

    #[test]
    fn a_route_through_a_proxy_has_its_credentials_and_a_direct_one_none() {
        let env = [("HTTPS_PROXY", "http://agent:hunter2@proxy.corp:3128")];
        let proxied = route_of("https://coder.example.com", &env).unwrap();
        let c = proxied.credentials();
        assert!(c.iter().any(|f| f == "hunter2"), "{c:?}");
        assert_eq!(c, credentials_of(&Url::parse(env[0].1).unwrap()));
        let direct = route_of("https://localhost", &env).unwrap();
        assert!(matches!(direct, Route::Direct(_)), "{direct:?}");
        assert_eq!(direct.credentials(), Vec::<String>::new());
    }

    #[test]
    fn host_and_port_split_as_gos_split_host_port() {
        // net.SplitHostPort (Go's net/ipsock.go): the port follows the last
        // colon; a bracketed host ends just before it; no other bracket or
        // colon anywhere.
        let table: &[(&str, Option<(&str, &str)>)] = &[
            (
                "coder.example.com:3000",
                Some(("coder.example.com", "3000")),
            ),
            (":3000", Some(("", "3000"))),
            ("coder.example.com:", Some(("coder.example.com", ""))),
            ("[2001:db8::1]:3000", Some(("2001:db8::1", "3000"))),
            ("[2001:db8::1]:", Some(("2001:db8::1", ""))),
            // missing port in address
            ("coder.example.com", None),
            ("[2001:db8::1]", None),
            ("[2001:db8::1]3000", None),
            // too many colons in address
            ("2001:db8::1", None),
            ("[2001:db8::1]:1:2", None),
            // missing ']' in address
            ("[2001:db8::1:3000", None),
            // unexpected '[' in address
            ("[[2001:db8::1]:3000", None),
            ("a[b:3000", None),
            ("host:30[00", None),
            // unexpected ']' in address
            ("[2001:db8::1]:30]00", None),
            ("a]b:3000", None),
            ("host:30]00", None),
        ];
        for (s, want) in table {
            assert_eq!(split_host_port(s), *want, "{s}");
        }
    }

    #[test]
    fn every_proxy_variable_set_gives_its_credentials() {
        // Issue #19, item 7: a header command inherits every proxy variable,
        // also those not used for this Coder URL.
        let env = env_of(&[
            ("HTTPS_PROXY", "http://a:first-pw@p1:1"),
            ("http_proxy", "p2:2"),
            ("ALL_PROXY", "http://c:third-pw@p3:3"),
            ("all_proxy", "socks5://d:fourth-pw@p4:4"),
            ("https_proxy", "not a URL at all"),
        ]);
        let c = env_credentials(&env);
        for pw in ["first-pw", "third-pw", "fourth-pw"] {
            assert!(c.iter().any(|f| f == pw), "{pw}: {c:?}");
        }
    }
}
