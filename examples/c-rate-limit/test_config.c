// Native unit test of config.c: cc -Wall -o /tmp/t test_config.c config.c -lm && /tmp/t
#include <stdio.h>
#include <string.h>

#include "config.h"

static int failures = 0, passed = 0;

static void check(int ok, const char *what) {
    if (ok) {
        passed++;
    } else {
        failures++;
        printf("FAIL: %s\n", what);
    }
}

static const char *parse(const char *s, rl_config_t *c) { return rl_parse_config(s, strlen(s), c); }

int main(void) {
    rl_config_t c;
    check(parse("", &c) == NULL && c.rate == 10 && c.burst == 10 && c.key == KEY_PRINCIPAL &&
              c.max_delay_ms == 0,
          "empty config = defaults");
    check(parse("{}", &c) == NULL && c.rate == 10, "{} = defaults");
    check(parse("{\"rate\": 1, \"burst\": 3, \"key\": \"client\"}", &c) == NULL && c.rate == 1 &&
              c.burst == 3 && c.key == KEY_CLIENT,
          "rate/burst/key");
    check(parse("{\"rate\":0.5}", &c) == NULL && c.burst == 1, "burst defaults to max(rate,1)");
    check(parse("{\"rate\":2.5e1,\"key\":\"channel\",\"max_delay_ms\":250}", &c) == NULL &&
              c.rate == 25 && c.burst == 25 && c.key == KEY_CHANNEL && c.max_delay_ms == 250,
          "exponent, channel key, max delay");
    check(parse("{\"rate\":0}", &c) != NULL, "rate 0 refused");
    check(parse("{\"rate\":-1}", &c) != NULL, "negative rate refused");
    check(parse("{\"rate\":1,\"burst\":0.5}", &c) != NULL, "burst < 1 refused");
    check(parse("{\"key\":\"ip\"}", &c) != NULL, "unknown key kind refused");
    check(parse("{\"colour\":1}", &c) != NULL, "unknown field refused");
    check(parse("{\"rate\":\"1\"}", &c) != NULL, "string rate refused");
    check(parse("{\"max_delay_ms\":1.5}", &c) != NULL, "fractional delay refused");
    check(parse("{\"rate\":1", &c) != NULL, "unterminated object refused");
    check(parse("{\"rate\":1} x", &c) != NULL, "trailing text refused");
    check(parse("[1]", &c) != NULL, "non-object refused");
    printf("%d passed, %d failed\n", passed, failures);
    return failures != 0;
}
