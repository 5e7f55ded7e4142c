// lk_status_name: shared by both native libraries (each links its own copy; symbols are hidden
// except the LK_API exports, so the two copies never clash in one process).
#include "lora_kernels.h"

LK_API const char* lk_status_name(lk_status status) {
    switch (status) {
        case LK_OK: return "LK_OK";
        case LK_ERR_INVALID_ARGUMENT: return "LK_ERR_INVALID_ARGUMENT";
        case LK_ERR_OUT_OF_MEMORY: return "LK_ERR_OUT_OF_MEMORY";
        case LK_ERR_UNSUPPORTED: return "LK_ERR_UNSUPPORTED";
        case LK_ERR_INTERNAL: return "LK_ERR_INTERNAL";
        case LK_ERR_KERNEL_FAULT: return "LK_ERR_KERNEL_FAULT";
        case LK_ERR_NOT_FOUND: return "LK_ERR_NOT_FOUND";
        default: return "LK_ERR_UNKNOWN";
    }
}
