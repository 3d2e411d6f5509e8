// Switchyard rate-limit plugin in C (wit-bindgen C bindings, world
// `rate-limit-plugin`).
//
// The twin of the Rust `token-bucket`: same config, same decisions. A token
// bucket per principal, client or channel, kept by the gateway
// (`host.take-tokens`): one atomic take per check, shared by every instance.
// Built by scripts/build-plugins.sh into target/plugins/c-rate-limit.wasm.
//
// Config: `rate` (tokens per second, default 10), `burst` (bucket size,
// default = max(rate, 1)), `key` = "principal" (default; falls back to the
// client id for anonymous principals) | "channel" | "client", `max_delay_ms`
// (default 0: over the limit -> reject; otherwise a wait up to this long is
// answered with `delay`).

#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "rate_limit_plugin.h"

typedef rate_limit_plugin_string_t str_t;

// The config is constant for the life of an instance: parsed on the first call.
static int config_state = 0; // 0 = not read, 1 = valid, -1 = invalid
static rl_config_t config;
static const char *config_error;

static void warn(const char *msg) {
    static const char prefix[] = "c-rate-limit: ";
    size_t n = strlen(msg);
    char *buf = malloc(sizeof prefix - 1 + n);
    if (!buf) return;
    memcpy(buf, prefix, sizeof prefix - 1);
    memcpy(buf + sizeof prefix - 1, msg, n);
    str_t s = {(uint8_t *)buf, sizeof prefix - 1 + n};
    switchyard_gateway_host_log(SWITCHYARD_GATEWAY_TYPES_LOG_LEVEL_WARN, &s);
    free(buf);
}

static const rl_config_t *get_config(void) {
    if (config_state == 0) {
        str_t raw;
        switchyard_gateway_host_config(&raw);
        config_error = rl_parse_config((const char *)raw.ptr, raw.len, &config);
        rate_limit_plugin_string_free(&raw);
        config_state = config_error ? -1 : 1;
    }
    return config_state == 1 ? &config : NULL;
}

void exports_switchyard_gateway_rate_limit_check(exports_switchyard_gateway_rate_limit_rate_key_t *key,
                                                 uint32_t cost,
                                                 exports_switchyard_gateway_rate_limit_rate_decision_t *ret) {
    const rl_config_t *cfg = get_config();
    if (!cfg) {
        // A misconfigured limiter must not silently let everything through.
        warn(config_error);
        ret->tag = SWITCHYARD_GATEWAY_TYPES_RATE_DECISION_REJECT;
        ret->val.reject = 1000;
        exports_switchyard_gateway_rate_limit_rate_key_free(key);
        return;
    }
    const char *tag;
    const str_t *id;
    if (cfg->key == KEY_CHANNEL) {
        tag = "ch:";
        id = &key->channel;
    } else if (cfg->key == KEY_PRINCIPAL && key->principal.len > 0) {
        tag = "p:";
        id = &key->principal;
    } else {
        tag = "c:";
        id = &key->client_id;
    }
    if (id->len == 0) {
        // Nothing to key on.
        ret->tag = SWITCHYARD_GATEWAY_TYPES_RATE_DECISION_ALLOW;
        exports_switchyard_gateway_rate_limit_rate_key_free(key);
        return;
    }
    size_t tag_len = strlen(tag);
    uint8_t *buf = malloc(tag_len + id->len);
    if (!buf) abort();
    memcpy(buf, tag, tag_len);
    memcpy(buf + tag_len, id->ptr, id->len);
    str_t bucket = {buf, tag_len + id->len};
    uint64_t wait_ms = 0, retry_ms = 0;
    bool taken = switchyard_gateway_host_take_tokens(&bucket, cfg->rate, cfg->burst, (double)cost,
                                                     cfg->max_delay_ms, &wait_ms, &retry_ms);
    free(buf);
    if (taken && wait_ms == 0) {
        ret->tag = SWITCHYARD_GATEWAY_TYPES_RATE_DECISION_ALLOW;
    } else if (taken) {
        // Granted in advance: the tokens are spent now, the caller waits.
        ret->tag = SWITCHYARD_GATEWAY_TYPES_RATE_DECISION_DELAY;
        ret->val.delay = wait_ms;
    } else {
        ret->tag = SWITCHYARD_GATEWAY_TYPES_RATE_DECISION_REJECT;
        ret->val.reject = retry_ms;
    }
    exports_switchyard_gateway_rate_limit_rate_key_free(key);
}
