use serde::{Deserialize, Serialize};

/// Hub-wide authentication switches (azure-protocol 6.10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Settings)]
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
    #[schema(value_type = TlsVersion)]
    pub min_tls_version: String,
    /// Services are told of every upload a device reports as successful (Azure's
    /// enableFileUploadNotifications).
    #[serde(default = "FileUploadDefaults::notifications")]
    pub enable_file_upload_notifications: bool,
    /// How long a blob URI given to a device for an upload stays valid, in seconds (Azure's
    /// sasTtlAsIso8601: one hour).
    #[serde(default = "FileUploadDefaults::sas_ttl_seconds")]
    #[schema(minimum = 1, maximum = 86_400)]
    pub file_upload_sas_ttl_seconds: i64,
    /// Uploads a device may have open at once (Azure: 10).
    #[serde(default = "FileUploadDefaults::max_concurrent")]
    #[schema(minimum = 1, maximum = 1000)]
    pub file_upload_max_concurrent: i64,
    /// The largest file a device may upload, in bytes.
    #[serde(default = "FileUploadDefaults::max_bytes")]
    #[schema(minimum = 1, maximum = 1_099_511_627_776_i64)]
    pub file_upload_max_bytes: i64,
    /// The hub indexes a tag or property path on its own once queries filtering on it have
    /// read every twin a few times on a large registry (certhub's; see `/twinIndexes`).
    #[serde(default = "default_true")]
    pub twin_auto_index: bool,
}

fn default_true() -> bool {
    true
}

/// The file-upload settings of a hub that never changed them.
#[derive(Debug)]
pub struct FileUploadDefaults;

impl FileUploadDefaults {
    pub fn notifications() -> bool {
        true
    }
    pub fn sas_ttl_seconds() -> i64 {
        3600
    }
    pub fn max_concurrent() -> i64 {
        10
    }
    /// 4 GiB.
    pub fn max_bytes() -> i64 {
        4 << 30
    }
}

/// The ranges of the numeric file-upload settings, checked on every change.
const SAS_TTL_RANGE: std::ops::RangeInclusive<i64> = 1..=86_400;
const MAX_CONCURRENT_RANGE: std::ops::RangeInclusive<i64> = 1..=1000;
const MAX_BYTES_RANGE: std::ops::RangeInclusive<i64> = 1..=(1 << 40);

/// The TLS versions minTlsVersion takes.
// The settings keep the text (it is stored and compared as such); this names the allowed
// values for the API description.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

impl Default for HubSettings {
    fn default() -> Self {
        Self {
            disable_device_sas: false,
            disable_module_sas: false,
            disable_local_auth: false,
            min_tls_version: "1.2".into(),
            enable_file_upload_notifications: FileUploadDefaults::notifications(),
            file_upload_sas_ttl_seconds: FileUploadDefaults::sas_ttl_seconds(),
            file_upload_max_concurrent: FileUploadDefaults::max_concurrent(),
            file_upload_max_bytes: FileUploadDefaults::max_bytes(),
            twin_auto_index: true,
        }
    }
}

/// The switches to change; null or absent leaves one as it is; unknown fields are an error.
// A partial update of `HubSettings`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(rename = "disableDeviceSAS", default)]
    pub disable_device_sas: Option<bool>,
    #[serde(rename = "disableModuleSAS", default)]
    pub disable_module_sas: Option<bool>,
    #[serde(default)]
    pub disable_local_auth: Option<bool>,
    #[serde(default)]
    #[schema(value_type = Option<TlsVersion>)]
    pub min_tls_version: Option<String>,
    /// `true`: devices authenticate with X.509 only, in one step: disableDeviceSAS,
    /// disableModuleSAS and disableLocalAuth all on (policy-signed tokens, the service API's
    /// included, are refused; `certhub hub set --local` on the hub's machine is the way back).
    /// `false` turns the three off.
    #[serde(rename = "x509Only", default)]
    #[schema(write_only)]
    pub x509_only: Option<bool>,
    #[serde(default)]
    pub enable_file_upload_notifications: Option<bool>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 86_400)]
    pub file_upload_sas_ttl_seconds: Option<i64>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub file_upload_max_concurrent: Option<i64>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_099_511_627_776_i64)]
    pub file_upload_max_bytes: Option<i64>,
    #[serde(default)]
    pub twin_auto_index: Option<bool>,
}

impl SettingsPatch {
    /// Applies the patch, refusing a TLS version other than 1.2 or 1.3.
    pub fn apply(self, to: &HubSettings) -> Result<HubSettings, String> {
        let mut s = to.clone();
        if let Some(all) = self.x509_only {
            let conflicting = [
                ("disableDeviceSAS", self.disable_device_sas),
                ("disableModuleSAS", self.disable_module_sas),
                ("disableLocalAuth", self.disable_local_auth),
            ]
            .into_iter()
            .find(|(_, v)| v.is_some_and(|v| v != all));
            if let Some((name, _)) = conflicting {
                return Err(format!(
                    "x509Only {all} sets {name} to {all}; leave {name} out or give it the same value"
                ));
            }
            s.disable_device_sas = all;
            s.disable_module_sas = all;
            s.disable_local_auth = all;
        }
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
        if let Some(v) = self.enable_file_upload_notifications {
            s.enable_file_upload_notifications = v;
        }
        if let Some(v) = self.twin_auto_index {
            s.twin_auto_index = v;
        }
        let ranged = [
            (
                "fileUploadSasTtlSeconds",
                self.file_upload_sas_ttl_seconds,
                SAS_TTL_RANGE,
                &mut s.file_upload_sas_ttl_seconds,
            ),
            (
                "fileUploadMaxConcurrent",
                self.file_upload_max_concurrent,
                MAX_CONCURRENT_RANGE,
                &mut s.file_upload_max_concurrent,
            ),
            (
                "fileUploadMaxBytes",
                self.file_upload_max_bytes,
                MAX_BYTES_RANGE,
                &mut s.file_upload_max_bytes,
            ),
        ];
        for (name, value, range, field) in ranged {
            if let Some(v) = value {
                if !range.contains(&v) {
                    return Err(format!(
                        "{name} {v} is out of range: give {} to {}",
                        range.start(),
                        range.end()
                    ));
                }
                *field = v;
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(json: &str) -> SettingsPatch {
        serde_json::from_str(json).expect("patch")
    }

    #[test]
    fn x509_only_sets_the_three_switches_together() {
        let on = patch(r#"{"x509Only": true}"#)
            .apply(&HubSettings::default())
            .expect("applied");
        assert!(on.disable_device_sas && on.disable_module_sas && on.disable_local_auth);
        assert_eq!(on.min_tls_version, "1.2");
        let off = patch(r#"{"x509Only": false}"#).apply(&on).expect("applied");
        assert_eq!(off, HubSettings::default());
        let e = patch(r#"{"x509Only": true, "disableLocalAuth": false}"#)
            .apply(&HubSettings::default())
            .expect_err("conflict");
        assert!(e.contains("disableLocalAuth"), "{e}");
        patch(r#"{"x509Only": true, "disableDeviceSAS": true}"#)
            .apply(&HubSettings::default())
            .expect("the same value is fine");
    }
}
