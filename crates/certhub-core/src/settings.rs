use serde::{Deserialize, Serialize};

/// Hub-wide authentication switches (azure-protocol 6.10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubSettings {
    /// Device-scoped SAS keys cannot authenticate (modules excluded).
    #[serde(rename = "disableDeviceSAS")]
    pub disable_device_sas: bool,
    /// Module-scoped SAS keys cannot authenticate.
    #[serde(rename = "disableModuleSAS")]
    pub disable_module_sas: bool,
    /// Tokens signed with a shared access policy key (`skn=`) cannot authenticate.
    pub disable_local_auth: bool,
    /// The lowest TLS version devices may use: "1.2" or "1.3".
    pub min_tls_version: String,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            disable_device_sas: false,
            disable_module_sas: false,
            disable_local_auth: false,
            min_tls_version: "1.2".into(),
        }
    }
}

/// A partial update of [`HubSettings`]; unknown fields are an error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(rename = "disableDeviceSAS", default)]
    pub disable_device_sas: Option<bool>,
    #[serde(rename = "disableModuleSAS", default)]
    pub disable_module_sas: Option<bool>,
    #[serde(default)]
    pub disable_local_auth: Option<bool>,
    #[serde(default)]
    pub min_tls_version: Option<String>,
}

impl SettingsPatch {
    /// Applies the patch, refusing a TLS version other than 1.2 or 1.3.
    pub fn apply(self, to: &HubSettings) -> Result<HubSettings, String> {
        let mut s = to.clone();
        if let Some(v) = self.disable_device_sas {
            s.disable_device_sas = v;
        }
        if let Some(v) = self.disable_module_sas {
            s.disable_module_sas = v;
        }
        if let Some(v) = self.disable_local_auth {
            s.disable_local_auth = v;
        }
        if let Some(v) = self.min_tls_version {
            if v != "1.2" && v != "1.3" {
                return Err(format!(
                    "minTlsVersion {v:?} is not supported; use \"1.2\" or \"1.3\""
                ));
            }
            s.min_tls_version = v;
        }
        Ok(s)
    }
}
