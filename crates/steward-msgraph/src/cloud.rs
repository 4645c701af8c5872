//! National clouds and endpoint overrides.
//!
//! The `graph_domain` setting picks the cloud: its login host, Graph host and ARM host, and the scopes
//! tokens are requested for. Overrides (an emulator, a proxy) replace the URLs but never the scopes: a
//! token for the emulator is still requested for `https://graph.microsoft.com/.default`, exactly as it
//! would be for Microsoft.

use crate::error::{Error, Result};

/// A Microsoft cloud's hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloud {
    /// e.g. `login.microsoftonline.com`.
    pub login_host: &'static str,
    /// e.g. `graph.microsoft.com`.
    pub graph_host: &'static str,
    /// e.g. `management.azure.com`.
    pub arm_host: &'static str,
}

impl Cloud {
    /// The cloud of a Graph domain: `graph.microsoft.com` (public, GCC), `graph.microsoft.us` (GCC High),
    /// `dod-graph.microsoft.us` (DoD), `microsoftgraph.chinacloudapi.cn` (China, 21Vianet).
    pub fn from_graph_domain(domain: &str) -> Result<Cloud> {
        let d = domain
            .trim()
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_ascii_lowercase();
        Ok(match d.as_str() {
            "" | "graph.microsoft.com" => Cloud {
                login_host: "login.microsoftonline.com",
                graph_host: "graph.microsoft.com",
                arm_host: "management.azure.com",
            },
            "graph.microsoft.us" => Cloud {
                login_host: "login.microsoftonline.us",
                graph_host: "graph.microsoft.us",
                arm_host: "management.usgovcloudapi.net",
            },
            "dod-graph.microsoft.us" => Cloud {
                login_host: "login.microsoftonline.us",
                graph_host: "dod-graph.microsoft.us",
                arm_host: "management.usgovcloudapi.net",
            },
            "microsoftgraph.chinacloudapi.cn" => Cloud {
                login_host: "login.chinacloudapi.cn",
                graph_host: "microsoftgraph.chinacloudapi.cn",
                arm_host: "management.chinacloudapi.cn",
            },
            other => {
                return Err(Error::Config(format!(
                    "unknown graph domain '{other}': use graph.microsoft.com, graph.microsoft.us, dod-graph.microsoft.us or microsoftgraph.chinacloudapi.cn (and --graph-endpoint to reach another host)"
                )));
            }
        })
    }

    /// The scope of Graph tokens in this cloud.
    pub fn graph_scope(&self) -> String {
        format!("https://{}/.default", self.graph_host)
    }

    /// The scope of ARM tokens in this cloud.
    pub fn arm_scope(&self) -> String {
        format!("https://{}/.default", self.arm_host)
    }
}

/// Where requests go: the cloud's hosts unless overridden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The cloud (decides scopes).
    pub cloud: Cloud,
    /// Login base URL, no trailing slash (e.g. `https://login.microsoftonline.com`).
    pub login: String,
    /// Graph base URL, no version (e.g. `https://graph.microsoft.com`).
    pub graph: String,
    /// ARM base URL.
    pub arm: String,
}

impl Endpoints {
    /// The endpoints of `graph_domain`, with optional overrides.
    pub fn new(
        graph_domain: &str,
        login: Option<&str>,
        graph: Option<&str>,
        arm: Option<&str>,
    ) -> Result<Endpoints> {
        let cloud = Cloud::from_graph_domain(graph_domain)?;
        let pick = |o: Option<&str>, host: &str, what: &str| -> Result<String> {
            match o {
                Some(u) if !u.trim().is_empty() => {
                    let u = u.trim().trim_end_matches('/');
                    url::Url::parse(u)
                        .map_err(|e| Error::Config(format!("--{what}-endpoint '{u}' is not a URL: {e}")))?;
                    Ok(u.to_owned())
                }
                _ => Ok(format!("https://{host}")),
            }
        };
        Ok(Endpoints {
            login: pick(login, cloud.login_host, "login")?,
            graph: pick(graph, cloud.graph_host, "graph")?,
            arm: pick(arm, cloud.arm_host, "arm")?,
            cloud,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn national_clouds() {
        let us = Cloud::from_graph_domain("graph.microsoft.us").unwrap();
        assert_eq!(us.login_host, "login.microsoftonline.us");
        assert_eq!(us.arm_host, "management.usgovcloudapi.net");
        let dod = Cloud::from_graph_domain("dod-graph.microsoft.us").unwrap();
        assert_eq!(dod.login_host, "login.microsoftonline.us");
        let cn = Cloud::from_graph_domain("microsoftgraph.chinacloudapi.cn").unwrap();
        assert_eq!(cn.login_host, "login.chinacloudapi.cn");
        assert_eq!(cn.arm_host, "management.chinacloudapi.cn");
        assert_eq!(
            cn.graph_scope(),
            "https://microsoftgraph.chinacloudapi.cn/.default"
        );
        assert!(Cloud::from_graph_domain("graph.example.com").is_err());
    }

    #[test]
    fn overrides_keep_scopes() {
        let e = Endpoints::new(
            "graph.microsoft.com",
            Some("http://127.0.0.1:1/"),
            Some("http://127.0.0.1:2"),
            None,
        )
        .unwrap();
        assert_eq!(e.login, "http://127.0.0.1:1");
        assert_eq!(e.graph, "http://127.0.0.1:2");
        assert_eq!(e.arm, "https://management.azure.com");
        assert_eq!(e.cloud.graph_scope(), "https://graph.microsoft.com/.default");
        assert!(Endpoints::new("", Some("not a url"), None, None).is_err());
    }
}
