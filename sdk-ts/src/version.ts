/** The SDK's version, written into every event's `sdk_version` (kept in step with package.json). */
export const SDK_VERSION = "0.1.0";
