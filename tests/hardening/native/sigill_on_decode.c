/* A libllama that really dies on decode, for tests: preloaded (LD_PRELOAD) into a process,
 * its llama_decode raises SIGILL when the process is the isolated model check of a file
 * whose path holds "dies-on-decode", as an AMX kernel or a build for another CPU does on
 * the first decode; everywhere else it forwards to the real llama_decode. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "llama.h"

static int probing_a_dying_file(void) {
    char cmdline[8192];
    FILE * file = fopen("/proc/self/cmdline", "rb");
    if (!file) return 0;
    size_t size = fread(cmdline, 1, sizeof(cmdline) - 1, file);
    fclose(file);
    cmdline[size] = '\0';
    int probe = 0, dying = 0;
    for (size_t at = 0; at < size; at += strlen(cmdline + at) + 1) {
        probe |= strcmp(cmdline + at, "kolosal.llama.probe") == 0;
        dying |= strstr(cmdline + at, "dies-on-decode") != NULL;
    }
    return probe && dying;
}

int32_t llama_decode(struct llama_context * ctx, struct llama_batch batch) {
    if (probing_a_dying_file()) {
        raise(SIGILL);
    }
    typedef int32_t (*decode_fn)(struct llama_context *, struct llama_batch);
    static decode_fn real = NULL;
    if (!real) {  /* libllama was dlopen'ed (RTLD_LOCAL) by the bindings: find it by soname */
        real = (decode_fn) dlsym(RTLD_NEXT, "llama_decode");
        const char * names[] = {"libllama.so.0", "libllama.so"};
        for (int i = 0; !real && i < 2; i++) {
            void * handle = dlopen(names[i], RTLD_LAZY | RTLD_NOLOAD);
            if (handle) real = (decode_fn) dlsym(handle, "llama_decode");
        }
    }
    return real(ctx, batch);
}
