// Config parsing of the C rate limiter: plain C (no host calls), unit-tested
// natively by test_config.c (`cc -o /tmp/t test_config.c config.c && /tmp/t`).
#ifndef C_RATE_LIMIT_CONFIG_H
#define C_RATE_LIMIT_CONFIG_H

#include <stddef.h>
#include <stdint.h>

typedef enum { KEY_PRINCIPAL = 0, KEY_CHANNEL = 1, KEY_CLIENT = 2 } key_by_t;

typedef struct {
    double rate;          // tokens per second (default 10)
    double burst;         // bucket size (default max(rate, 1))
    key_by_t key;         // what the bucket is keyed on (default principal)
    uint64_t max_delay_ms; // 0: over the limit -> reject; else delay up to this
} rl_config_t;

// Parses the policy's `config` JSON object (`len` bytes, not NUL-terminated).
// Returns NULL on success, else a static message saying what is wrong.
const char *rl_parse_config(const char *json, size_t len, rl_config_t *out);

#endif
