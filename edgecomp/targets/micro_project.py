"""The micro target's buildable project: an inference API, an example program and a Makefile.

Written next to ``model_data.cc``/``.h`` and ``op_resolver.h`` in the target's folder:

- ``edgecomp_model.h``/``.cc``: ``edgecomp::Init()``, ``Input()``, ``Invoke()``,
  ``Output()``, ``ArenaUsedBytes()`` over TFLM's ``MicroInterpreter``, with a static
  tensor arena of the measured size plus ``ARENA_MARGIN_BYTES`` (override with
  ``-DEDGECOMP_ARENA_BYTES=...``).
- ``test_samples.h``/``.cc``: a few quantized test inputs, their labels and the
  outputs the Python TFLM interpreter gave for them.
- ``main.cc``: runs the samples, prints every output, the accuracy, the arena used
  and whether each output is byte-identical to the Python run.
- ``Makefile``: ``make TFLM_TREE=<a create_tflm_tree.py export>`` builds for the host
  (g++); ``TARGET=cortex_m4`` builds with arm-none-eabi-g++ and newlib for a Cortex-M4
  (an mps2-an386 board, which ``make run`` runs under ``qemu-system-arm``);
  ``cortex_m4/`` holds that board's start-up code and linker script.

Example:
    >>> write_project(content, runtime.io_details(content), folder, x, y, expected, 6128)  # doctest: +SKIP
    $ make -C folder TFLM_TREE=~/tflm_tree run
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecomp import files

# Added to the arena measured on the 64-bit host: a TFLM of another version may plan a little more.
ARENA_MARGIN_BYTES = 1024
# The example embeds at most this many test samples and this many bytes of inputs.
EXAMPLE_SAMPLES = 32
EXAMPLE_INPUT_BYTES = 32 * 1024


def example_samples(io: dict, x: np.ndarray) -> int:
    """How many test samples the example program embeds (all of ``x`` up to the caps).

    ``io`` is ``runtime.io_details`` of the model (of the uncompressed file for a LUT-compressed one,
    which LiteRT cannot load; the two have the same inputs and outputs).
    """
    size = int(np.prod(io["inputs"][0]["shape"]))
    return int(max(1, min(len(x), EXAMPLE_SAMPLES, EXAMPLE_INPUT_BYTES // max(size, 1))))


def quantize_inputs(io: dict, x: np.ndarray) -> np.ndarray:
    """``x`` as the model's int8 input values, rounded as edgecomp's TFLM check rounds them."""
    detail = io["inputs"][0]
    scale, zero = float(detail["scale"]), int(detail["zero_point"])
    return np.clip(np.round(np.asarray(x, dtype=np.float32) / scale + zero), -128, 127).astype(np.int8)


def model_defines(content: bytes) -> list[str]:
    """Preprocessor flags the model needs from TFLM: compression support for a LUT-compressed model."""
    from edgecomp.targets import micro

    return ["-DUSE_TFLM_COMPRESSION"] if "TFLM_DECODE" in micro.op_names(content) else []


def _rows(values: np.ndarray) -> str:
    return ",\n".join("  {" + ", ".join(str(int(v)) for v in row.reshape(-1)) + "}" for row in values)


def write_project(content: bytes, io: dict, folder: Path, x: np.ndarray, y: np.ndarray, expected: np.ndarray,
                  arena_bytes: int) -> list[Path]:
    """Writes the inference API, the example program, its samples and the Makefile into ``folder``.

    Args:
        content: the model (the one in ``model_data.cc``); int8 input and output.
        io: its inputs and outputs (``runtime.io_details``; see ``example_samples``).
        folder: the micro target's folder.
        x, y: the test samples the example runs (float, as the dataset has them) and their labels.
        expected: the raw int8 outputs the Python TFLM interpreter gave for ``quantize_inputs(io, x)``.
        arena_bytes: the arena TFLM needed on this machine.

    Returns:
        The files written.
    """
    source, sink = io["inputs"][0], io["outputs"][0]
    if source["dtype"] != "int8" or sink["dtype"] != "int8":
        raise ValueError(f"the micro project needs int8 input and output, not {source['dtype']}/{sink['dtype']}")
    inputs = quantize_inputs(io, x)
    input_bytes, output_bytes = int(np.prod(source["shape"])), int(np.prod(sink["shape"]))
    arena = (arena_bytes + ARENA_MARGIN_BYTES + 15) // 16 * 16
    texts = {
        "edgecomp_model.h": MODEL_HEADER.format(
            arena=arena, measured=arena_bytes, margin=ARENA_MARGIN_BYTES, input_bytes=input_bytes,
            output_bytes=output_bytes, input_shape=list(source["shape"]), output_shape=list(sink["shape"]),
            input_scale=repr(float(source["scale"])), input_zero=int(source["zero_point"]),
            output_scale=repr(float(sink["scale"])), output_zero=int(sink["zero_point"])),
        "edgecomp_model.cc": MODEL_SOURCE,
        "test_samples.h": SAMPLES_HEADER.format(count=len(inputs)),
        "test_samples.cc": SAMPLES_SOURCE.format(
            count=len(inputs), inputs=_rows(inputs), labels=", ".join(str(int(v)) for v in y[: len(inputs)]),
            expected=_rows(np.asarray(expected, dtype=np.int8)[: len(inputs)])),
        "main.cc": MAIN_SOURCE,
        "Makefile": MAKEFILE.replace("{model_defines}", " ".join(model_defines(content))).replace(" \n", "\n"),
        "cortex_m4/startup.c": STARTUP_SOURCE,
        "cortex_m4/mps2_an386.ld": LINKER_SCRIPT,
    }
    return [files.write_text(folder / name, text) for name, text in texts.items()]


MODEL_HEADER = """\
// Generated by edgecomp: a small inference API over TensorFlow Lite for Microcontrollers.
//
//   if (edgecomp::Init() != kTfLiteOk) ...;          // maps the model, registers its ops, plans the arena
//   memcpy(edgecomp::Input(), my_int8_input, edgecomp::kInputBytes);
//   edgecomp::Invoke();
//   const int8_t* scores = edgecomp::Output();        // edgecomp::kOutputBytes int8 values
#ifndef EDGECOMP_MODEL_H_
#define EDGECOMP_MODEL_H_

#include <stddef.h>
#include <stdint.h>

#include "tensorflow/lite/c/common.h"

// The tensor arena: {measured} bytes measured by edgecomp in TFLM on a 64-bit host (a 32-bit
// MCU needs a little less) + {margin} bytes of margin, rounded to 16. Override with -DEDGECOMP_ARENA_BYTES=...
#ifndef EDGECOMP_ARENA_BYTES
#define EDGECOMP_ARENA_BYTES {arena}
#endif

namespace edgecomp {{

constexpr size_t kArenaBytes = EDGECOMP_ARENA_BYTES;
constexpr int kInputBytes = {input_bytes};    // int8 values of input 0, shape {input_shape}
constexpr int kOutputBytes = {output_bytes};  // int8 values of output 0, shape {output_shape}
constexpr float kInputScale = {input_scale}f;   // real = (q - zero point) * scale
constexpr int kInputZeroPoint = {input_zero};
constexpr float kOutputScale = {output_scale}f;
constexpr int kOutputZeroPoint = {output_zero};

// Maps the model, registers exactly its ops and allocates its tensors. Call once; kTfLiteError
// (with TFLM's message on its log) when the arena is too small or the model does not fit this TFLM.
TfLiteStatus Init();
// Where to write kInputBytes quantized input values before Invoke().
int8_t* Input();
// Runs the model on the input, then resets any state so that each call is independent.
TfLiteStatus Invoke();
// The kOutputBytes int8 output values of the last Invoke().
const int8_t* Output();
// Bytes of the arena the model uses (TFLM's arena_used_bytes()); 0 before Init().
size_t ArenaUsedBytes();

}}  // namespace edgecomp

#endif  // EDGECOMP_MODEL_H_
"""

MODEL_SOURCE = """\
// Generated by edgecomp: the inference API of edgecomp_model.h.
#include "edgecomp_model.h"

#include <new>

#include "model_data.h"
#include "op_resolver.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace edgecomp {
namespace {

alignas(16) uint8_t arena[kArenaBytes];
ModelOpResolver resolver;
alignas(tflite::MicroInterpreter) uint8_t interpreter_storage[sizeof(tflite::MicroInterpreter)];
tflite::MicroInterpreter* interpreter = nullptr;

}  // namespace

TfLiteStatus Init() {
  if (interpreter != nullptr) return kTfLiteOk;
  const tflite::Model* model = tflite::GetModel(g_model_data);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    MicroPrintf("edgecomp: model schema version %d, this TFLM reads %d", static_cast<int>(model->version()),
                TFLITE_SCHEMA_VERSION);
    return kTfLiteError;
  }
  if (RegisterModelOps(resolver) != kTfLiteOk) return kTfLiteError;
  tflite::MicroInterpreter* candidate = new (interpreter_storage) tflite::MicroInterpreter(
      model, resolver, arena, kArenaBytes);
  if (candidate->AllocateTensors() != kTfLiteOk) {
    MicroPrintf("edgecomp: AllocateTensors failed with a %d byte arena", static_cast<int>(kArenaBytes));
    return kTfLiteError;
  }
  TfLiteTensor* input = candidate->input(0);
  TfLiteTensor* output = candidate->output(0);
  if (input->type != kTfLiteInt8 || output->type != kTfLiteInt8 ||
      static_cast<int>(input->bytes) != kInputBytes || static_cast<int>(output->bytes) != kOutputBytes) {
    MicroPrintf("edgecomp: the model's input or output is not the int8 tensor edgecomp_model.h describes");
    return kTfLiteError;
  }
  interpreter = candidate;
  return kTfLiteOk;
}

int8_t* Input() { return interpreter == nullptr ? nullptr : interpreter->input(0)->data.int8; }

TfLiteStatus Invoke() {
  if (interpreter == nullptr) return kTfLiteError;
  TfLiteStatus status = interpreter->Invoke();
  if (status != kTfLiteOk) return status;
  return interpreter->Reset();
}

const int8_t* Output() { return interpreter == nullptr ? nullptr : interpreter->output(0)->data.int8; }

size_t ArenaUsedBytes() { return interpreter == nullptr ? 0 : interpreter->arena_used_bytes(); }

}  // namespace edgecomp
"""

SAMPLES_HEADER = """\
// Generated by edgecomp: test samples for the example program.
#ifndef EDGECOMP_TEST_SAMPLES_H_
#define EDGECOMP_TEST_SAMPLES_H_

#include <stdint.h>

#include "edgecomp_model.h"

constexpr int kTestSampleCount = {count};
// Quantized test inputs (rounded as edgecomp's check rounds them), their labels, and the outputs the
// Python TFLM interpreter (the tflite-micro package) gave for them when edgecomp verified the model.
extern const int8_t kTestInputs[kTestSampleCount][edgecomp::kInputBytes];
extern const int kTestLabels[kTestSampleCount];
extern const int8_t kExpectedOutputs[kTestSampleCount][edgecomp::kOutputBytes];

#endif  // EDGECOMP_TEST_SAMPLES_H_
"""

SAMPLES_SOURCE = """\
// Generated by edgecomp: test samples for the example program.
#include "test_samples.h"

const int8_t kTestInputs[kTestSampleCount][edgecomp::kInputBytes] = {{
{inputs}
}};
const int kTestLabels[kTestSampleCount] = {{{labels}}};
const int8_t kExpectedOutputs[kTestSampleCount][edgecomp::kOutputBytes] = {{
{expected}
}};
"""

MAIN_SOURCE = """\
// Generated by edgecomp: runs the embedded test samples and prints what the model answers.
// Each line 'sample I label L predicted P outputs O...' gives the raw int8 outputs.
#include <stdio.h>
#include <string.h>

#include "edgecomp_model.h"
#include "test_samples.h"

int main() {
  if (edgecomp::Init() != kTfLiteOk) {
    printf("edgecomp: Init failed\\n");
    return 2;
  }
  printf("arena_used_bytes %d of %d\\n", static_cast<int>(edgecomp::ArenaUsedBytes()),
         static_cast<int>(edgecomp::kArenaBytes));
  int correct = 0, identical = 0;
  for (int i = 0; i < kTestSampleCount; ++i) {
    memcpy(edgecomp::Input(), kTestInputs[i], edgecomp::kInputBytes);
    if (edgecomp::Invoke() != kTfLiteOk) {
      printf("edgecomp: Invoke failed on sample %d\\n", i);
      return 3;
    }
    const int8_t* output = edgecomp::Output();
    int best = 0;
    for (int j = 1; j < edgecomp::kOutputBytes; ++j) {
      if (output[j] > output[best]) best = j;
    }
    correct += best == kTestLabels[i];
    identical += memcmp(output, kExpectedOutputs[i], edgecomp::kOutputBytes) == 0;
    printf("sample %d label %d predicted %d outputs", i, kTestLabels[i], best);
    for (int j = 0; j < edgecomp::kOutputBytes; ++j) printf(" %d", output[j]);
    printf("\\n");
  }
  printf("accuracy %d/%d\\n", correct, kTestSampleCount);
  printf("identical_to_python_tflm %d/%d\\n", identical, kTestSampleCount);
  return identical == kTestSampleCount ? 0 : 1;
}
"""

MAKEFILE = r"""# Generated by edgecomp: builds the example program (main.cc) against TensorFlow Lite for Microcontrollers.
#
#   make TFLM_TREE=/path/to/tflm_tree run                    # host (g++): build and run
#   make TFLM_TREE=/path/to/tflm_tree TARGET=cortex_m4 run   # arm-none-eabi-g++ + newlib, run under
#                                                             # qemu-system-arm -M mps2-an386 (semihosting)
#
# TFLM_TREE is a source tree exported by TFLM's create_tflm_tree.py (for a Cortex-M4 with CMSIS-NN:
# --makefile_options="TARGET=cortex_m_generic TARGET_ARCH=cortex-m4 OPTIMIZED_KERNEL_DIR=cmsis_nn").
# Every kernel of the tree is compiled into an archive and the linker keeps only those the model's
# resolver (op_resolver.h) registers. KERNEL_SRCS=... narrows what is compiled.
# To use the model in your own program, link edgecomp_model.cc and model_data.cc and call edgecomp_model.h.

ifndef TFLM_TREE
$(error TFLM_TREE is not set: give a TFLM source tree, e.g. make TFLM_TREE=~/tflm_tree)
endif
TARGET ?= host
BUILD ?= build/$(TARGET)
OPTIMIZE ?= -Os
PROGRAM := $(BUILD)/edgecomp_example

APP_SRCS := edgecomp_model.cc model_data.cc test_samples.cc main.cc
CORE_DIRS := tensorflow/lite/micro tensorflow/lite/micro/arena_allocator tensorflow/lite/micro/memory_planner \
  tensorflow/lite/micro/tflite_bridge tensorflow/lite/core/api tensorflow/lite/core/c tensorflow/lite/kernels \
  tensorflow/lite/kernels/internal tensorflow/lite/kernels/internal/reference \
  tensorflow/compiler/mlir/lite/core/api tensorflow/compiler/mlir/lite/schema
CORE_SRCS ?= $(filter-out %_test.cc %test_helpers.cc %test_helper_custom_ops.cc %mock_micro_graph.cc \
  %fake_micro_context.cc %recording_micro_allocator.cc, \
  $(foreach dir,$(CORE_DIRS),$(wildcard $(TFLM_TREE)/$(dir)/*.cc)))
KERNEL_SRCS ?= $(filter-out %_test.cc %_test_config.cc, $(wildcard $(TFLM_TREE)/tensorflow/lite/micro/kernels/*.cc \
  $(TFLM_TREE)/tensorflow/lite/micro/kernels/cmsis_nn/*.cc $(TFLM_TREE)/third_party/cmsis_nn/Source/*/*.c))

INCLUDES := -I. -I$(TFLM_TREE) -I$(TFLM_TREE)/third_party/flatbuffers/include -I$(TFLM_TREE)/third_party/gemmlowp \
  -I$(TFLM_TREE)/third_party/ruy -I$(TFLM_TREE)/third_party/kissfft
DEFINES := -DTF_LITE_STATIC_MEMORY -DTF_LITE_DISABLE_X86_NEON {model_defines}
COMMON := $(OPTIMIZE) -ffunction-sections -fdata-sections -Wno-unused-parameter
CXXFLAGS_ALL = -std=c++17 -fno-rtti -fno-exceptions -fno-threadsafe-statics -fno-unwind-tables $(COMMON) \
  $(DEFINES) $(INCLUDES) $(EXTRA_CXXFLAGS)
CFLAGS_ALL = -std=c11 $(COMMON) $(DEFINES) $(INCLUDES) $(EXTRA_CFLAGS)

ifeq ($(TARGET),host)
  CXX := g++
  CC := gcc
  AR := ar
  SIZE := size
  LDFLAGS := -Wl,--gc-sections
  RUN := ./$(PROGRAM)
else ifeq ($(TARGET),cortex_m4)
  CXX := arm-none-eabi-g++
  CC := arm-none-eabi-gcc
  AR := arm-none-eabi-ar
  SIZE := arm-none-eabi-size
  CPU := -mcpu=cortex-m4+nofp -mthumb -mfloat-abi=soft
  DEFINES += -DCMSIS_NN -DTF_LITE_MCU_DEBUG_LOG -DTF_LITE_USE_GLOBAL_CMATH_FUNCTIONS -DTF_LITE_USE_GLOBAL_MAX \
    -DTF_LITE_USE_GLOBAL_MIN -DARM_MATH_DSP -DARM_MATH_LOOPUNROLL
  INCLUDES += -I$(TFLM_TREE)/third_party/cmsis_nn -I$(TFLM_TREE)/third_party/cmsis_nn/Include \
    -I$(TFLM_TREE)/third_party/cmsis/CMSIS/Core/Include
  COMMON += $(CPU)
  APP_SRCS += cortex_m4/startup.c
  # cortex_m_generic's micro_time.cc reads the DWT cycle counter through a device header (ARMCM4.h) that
  # an export does not carry; only TFLM's profiler calls it.
  CORE_SRCS += $(TFLM_TREE)/tensorflow/lite/micro/cortex_m_generic/debug_log.cc
  CORE_SRCS := $(filter-out $(TFLM_TREE)/tensorflow/lite/micro/debug_log.cc \
    $(TFLM_TREE)/tensorflow/lite/micro/micro_time.cc, $(CORE_SRCS))
  LDFLAGS := $(CPU) -nostartfiles --specs=nano.specs --specs=rdimon.specs -T cortex_m4/mps2_an386.ld \
    -Wl,--gc-sections
  RUN := qemu-system-arm -M mps2-an386 -cpu cortex-m4 -nographic -monitor none -serial none \
    -semihosting-config enable=on,target=native $(QEMU_FLAGS) -kernel $(PROGRAM)
else
  $(error TARGET=$(TARGET) is unknown; allowed: host, cortex_m4)
endif

# TFLM's objects go under LIB_BUILD (share it between projects built for the same tree, target and flags).
LIB_BUILD ?= $(BUILD)
object = $(2)/obj/$(subst ..,__,$(patsubst /%,%,$(basename $(1)))).o
APP_OBJS := $(foreach src,$(APP_SRCS),$(call object,$(src),$(BUILD)))
CORE_OBJS := $(foreach src,$(CORE_SRCS),$(call object,$(src),$(LIB_BUILD)))
KERNEL_OBJS := $(foreach src,$(KERNEL_SRCS),$(call object,$(src),$(LIB_BUILD)))

.PHONY: all run size clean FORCE
all: $(PROGRAM)

$(PROGRAM): $(APP_OBJS) $(BUILD)/libtflm.a
	$(CXX) $(LDFLAGS) -o $@ $(APP_OBJS) $(BUILD)/libtflm.a -lm

# Archived again on every build: KERNEL_SRCS may name other objects than last time.
$(BUILD)/libtflm.a: $(CORE_OBJS) $(KERNEL_OBJS) FORCE
	@rm -f $@
	$(AR) rcs $@ $(filter %.o,$^)

FORCE:

define compile_rule
$(call object,$(1),$(2)): $(1)
	@mkdir -p $$(dir $$@)
	$$(if $$(filter %.c,$(1)),$$(CC) $$(CFLAGS_ALL),$$(CXX) $$(CXXFLAGS_ALL)) -c $$< -o $$@
endef
$(foreach src,$(APP_SRCS),$(eval $(call compile_rule,$(src),$(BUILD))))
$(foreach src,$(sort $(CORE_SRCS) $(KERNEL_SRCS)),$(eval $(call compile_rule,$(src),$(LIB_BUILD))))

run: $(PROGRAM)
	$(RUN)

size: $(PROGRAM)
	$(SIZE) $(PROGRAM)

clean:
	rm -rf $(BUILD)
"""

STARTUP_SOURCE = """\
/* Generated by edgecomp: start-up code for a Cortex-M4 (QEMU's mps2-an386 board) with newlib.
 * The vector table's reset handler copies .data to RAM, zeroes .bss, opens semihosting (printf goes to the host),
 * runs static constructors and main, then exits QEMU with main's return code.
 * On a real board use the vendor's start-up file and retarget printf instead. */
#include <stdlib.h>

extern unsigned int __data_load__, __data_start__, __data_end__, __bss_start__, __bss_end__, __stack_top__;
extern void initialise_monitor_handles(void);
extern void __libc_init_array(void);
extern int main(void);

/* What crti/crtbegin give a hosted program: this start-up code replaces them (-nostartfiles). */
void* __dso_handle = 0;
void _init(void) {}
void _fini(void) {}

void Reset_Handler(void) {
  const unsigned int* from = &__data_load__;
  for (unsigned int* word = &__data_start__; word < &__data_end__; ++word) *word = *from++;
  for (unsigned int* word = &__bss_start__; word < &__bss_end__; ++word) *word = 0;
  initialise_monitor_handles();
  __libc_init_array();
  exit(main());
}

static void Fault_Handler(void) {
  exit(128);
}

__attribute__((section(".isr_vector"), used)) void (*const vector_table[16])(void) = {
    (void (*)(void))(&__stack_top__), Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler, Fault_Handler};
"""

LINKER_SCRIPT = """\
/* Generated by edgecomp: memory map of QEMU's mps2-an386 (Cortex-M4). Code and constants go in
 * the 4 MB at 0x0 (flash on a real board), data, the arena and the stack in the 4 MB at 0x20000000.
 * 'arm-none-eabi-size' gives flash as text + data and RAM as data + bss. */
MEMORY {
  FLASH (rx) : ORIGIN = 0x00000000, LENGTH = 4M
  RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 4M
}
ENTRY(Reset_Handler)
SECTIONS {
  .text : {
    KEEP(*(.isr_vector))
    *(.text*)
    KEEP(*(.init)) KEEP(*(.fini))
    *(.rodata*)
    . = ALIGN(4);
    __preinit_array_start = .; KEEP(*(.preinit_array)) __preinit_array_end = .;
    __init_array_start = .; KEEP(*(SORT(.init_array.*))) KEEP(*(.init_array)) __init_array_end = .;
    __fini_array_start = .; KEEP(*(.fini_array)) __fini_array_end = .;
  } > FLASH
  .ARM.exidx : { *(.ARM.exidx* .gnu.linkonce.armexidx.*) } > FLASH
  __data_load__ = ADDR(.ARM.exidx) + SIZEOF(.ARM.exidx);
  .data : AT (__data_load__) { __data_start__ = .; *(.data*) . = ALIGN(4); __data_end__ = .; } > RAM
  .bss (NOLOAD) : { __bss_start__ = .; *(.bss*) *(COMMON) . = ALIGN(4); __bss_end__ = .; } > RAM
  end = .;
  __end__ = .;
  __stack_top__ = ORIGIN(RAM) + LENGTH(RAM);
}
"""
