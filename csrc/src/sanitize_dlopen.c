/* Linked into edgeseg-run only in the sanitizer build (EDGESEG_SANITIZE).
 *
 * oneTBB, inside OpenVINO, loads libtbbbind with RTLD_DEEPBIND, and AddressSanitizer aborts on
 * any RTLD_DEEPBIND dlopen (google/sanitizers#611). The executable's symbols come first in the
 * lookup order, so this dlopen sees TBB's call, drops that one flag and passes the call on to
 * the next dlopen: the sanitizer's interceptor. Everything else about the load is unchanged. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

void *dlopen(const char *filename, int flags) {
    void *(*next)(const char *, int) = (void *(*)(const char *, int))dlsym(RTLD_NEXT, "dlopen");
    return next ? next(filename, flags & ~RTLD_DEEPBIND) : NULL;
}
